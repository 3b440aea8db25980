"""The presets are the authors' released recipes, field by field; every method scores with its authors' template.

Expected values are transcribed from the releases at the commits pinned in ``vlprompt.methods.recipes``
(the path is named beside each); the recipes' own data is what is checked, not its shape.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vlprompt.data.benchmarks import DATASETS
from vlprompt.engine.presets import preset, preset_recipe, presets, protocol_preset, protocol_presets
from vlprompt.engine.recipe_table import markdown
from vlprompt.engine.schedules import lr_factor
from vlprompt.methods import METHODS
from vlprompt.runs.bench_sources import PROTOCOLS

REPO = Path(__file__).resolve().parents[1]

#: Dassl's OPTIM defaults and what every Dassl-based config sets the same way (INPUT.TRANSFORMS, PREC, warmup).
DASSL = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "dassl-cosine",
    "warmup_epochs": 1,
    "warmup_lr": 1e-5,
    "augment": True,
    "augmentation": "crop-flip",
    "precision": "fp16",
    "select": "last",
}

# (preset, shots) -> (TrainConfig fields, method options), from the released configs and scripts.
RELEASED = {
    # CoOp configs/trainers/CoOp/vit_b16_ep50.yaml (1 shot), _ep100 (2-4), vit_b16.yaml (8-16); main.sh N_CTX 16
    ("coop", 1): ({**DASSL, "epochs": 50, "batch_size": 32, "lr": 0.002}, {"n_ctx": 16, "ctx_init": ""}),
    ("coop", 4): ({"epochs": 100}, {}),
    ("coop", 16): ({"epochs": 200}, {}),
    ("coop-imagenet", 16): ({**DASSL, "epochs": 50, "batch_size": 32}, {"n_ctx": 16}),
    # CoOp in CoCoOp's scripts: vit_b16_ctxv1.yaml, vit_b16_ep50_ctxv1.yaml on ImageNet
    ("coop-base-to-new", 16): ({**DASSL, "epochs": 200, "batch_size": 32}, {"ctx_init": "a photo of a"}),
    ("coop-cross-dataset", 16): ({**DASSL, "epochs": 50, "batch_size": 32}, {"ctx_init": "a photo of a"}),
    # CoOp configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml
    ("cocoop", 16): (
        {**DASSL, "epochs": 10, "batch_size": 1, "lr": 0.002},
        {"n_ctx": 4, "ctx_init": "a photo of a"},
    ),
    # KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml, scripts/base2new_train.sh + run.sh (W 8.0)
    ("kgcoop", 16): ({**DASSL, "epochs": 100, "batch_size": 128, "lr": 0.002}, {"n_ctx": 4, "weight": 8.0}),
    # multimodal-prompt-learning configs/trainers/MaPLe/*.yaml
    ("maple", 16): ({**DASSL, "epochs": 5, "batch_size": 4, "lr": 0.0035}, {"n_ctx": 2, "depth": 9}),
    ("maple-cross-dataset", 16): ({**DASSL, "epochs": 2, "batch_size": 4, "lr": 0.0026}, {"n_ctx": 2, "depth": 3}),
    # multimodal-prompt-learning configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml
    ("ivlp", 16): (
        {**DASSL, "epochs": 5, "batch_size": 4, "lr": 0.0035},
        {"n_ctx_text": 2, "n_ctx_vision": 2, "depth_text": 12, "depth_vision": 12},
    ),
    # multimodal-prompt-learning configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml
    ("vpt", 16): ({**DASSL, "epochs": 5, "batch_size": 4, "lr": 0.0025}, {"n_tokens": 8, "deep": True, "depth": 12}),
    # PromptSRC configs/trainers/PromptSRC/*.yaml
    ("promptsrc", 16): (
        {**DASSL, "epochs": 20, "batch_size": 4, "lr": 0.0025},
        {"depth_text": 9, "depth_vision": 9, "gpa_mean": 15, "gpa_std": 1, "text_loss_weight": 25},
    ),
    ("promptsrc-cross-dataset", 16): (
        {**DASSL, "epochs": 20, "lr": 0.0025},
        {"depth_text": 3, "depth_vision": 3, "gpa_mean": 6, "gpa_std": 10, "image_loss_weight": 10},
    ),
    ("promptsrc-few-shot", 4): ({**DASSL, "epochs": 50}, {"gpa_mean": 30, "gpa_std": 30, "n_ctx_text": 4}),
    ("promptsrc-few-shot-gpa45", 4): ({**DASSL, "epochs": 50}, {"gpa_mean": 45, "gpa_std": 5, "n_ctx_vision": 4}),
    # CLIP-LoRA main.py, lora.py, run_utils.py
    ("clip-lora", 16): (
        {
            "optimizer": "adamw",
            "lr": 2e-4,
            "weight_decay": 1e-2,
            "batch_size": 32,
            "schedule": "cosine",
            "warmup_epochs": 0,
            "min_lr": 1e-6,
            "augment": True,
            "precision": "fp16",
            "select": "last",
            "max_steps": 500 * 16,  # lora.py: total_iters = n_iters * shots
            "drop_last": False,  # datasets/utils.py build_data_loader
        },
        {"logit_scale": 100.0},  # main.py: logit_scale = 100
    ),
    ("clip-lora", 4): ({"max_steps": 2000, "drop_last": False}, {"logit_scale": 100.0}),
    # visual_prompting main_clip.py (defaults), utils.py cosine_lr
    ("vp", 16): (
        {
            "epochs": 1000,
            "batch_size": 256,
            "lr": 40.0,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "warmup_steps": 1000,
            "augment": False,
            "precision": "fp16",
            "drop_last": False,  # main_clip.py:150-152, plain DataLoaders
            "select": "best",  # main_clip.py:199-215 (is_best; on the test split there, on validation here)
        },
        {},
    ),
    # Tip-Adapter main.py:69-73 (AdamW lr 1e-3, eps 1e-4, torch's decay 0.01, per-iteration cosine), adapter in
    # CLIP's fp16 dtype (main.py:69), datasets/utils.py:373 drop_last=False, configs/*.yaml train_epoch 20, fresh
    # RandomResizedCrop(scale=(0.5, 1)) + flip views each epoch (main.py:85-88, 173-181)
    ("tip-adapter-f", 16): (
        {
            "augment": True,
            "crop_scale": 0.5,
            "optimizer": "adamw",
            "lr": 1e-3,
            "adam_eps": 1e-4,
            "weight_decay": 0.01,
            "batch_size": 256,
            "epochs": 20,
            "schedule": "cosine",
            "warmup_epochs": 0,
            "drop_last": False,
            "precision": "fp16",
        },
        {"train_views": "engine"},
    ),
    ("tip-adapter-f-eurosat", 16): ({"epochs": 100, "drop_last": False}, {"init_alpha": 2.0}),
    ("tip-adapter-f-imagenet", 16): ({"epochs": 20, "drop_last": False, "batch_size": 256}, {}),
    # DePT configs/trainers/ExtrasLinearProbeCoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml (configs.py cocoop_dept)
    ("dept-cocoop", 16): (
        {**DASSL, "epochs": 10, "batch_size": 1, "lr": 0.002},
        {"method": "cocoop", "options": {"n_ctx": 4, "ctx_init": "a photo of a"}},
    ),
    # MMRL configs/trainers/MMRL/vit_b16.yaml (RRCROP_SCALE (0.5, 1), PREC amp), vit_b16_imagenet.yaml
    ("mmrl", 16): (
        {**DASSL, "optimizer": "adamw", "lr": 1e-3, "epochs": 10, "batch_size": 4, "crop_scale": 0.5},
        {"reg_weight": 1.0},
    ),
    ("mmrl-imagenet", 16): ({"epochs": 5, "batch_size": 32, "crop_scale": 0.5}, {"reg_weight": 0.5}),
    # vit_b16_few_shot.yaml (trainers/config.py's λ merged after it: DTD 6.0, EuroSAT 0.01 with REP_DIM 2048)
    ("mmrl-few-shot-dtd", 4): ({"epochs": 50, "batch_size": 32, "crop_scale": 0.5}, {"reg_weight": 6.0}),
    ("mmrl-few-shot-eurosat", 16): ({"epochs": 50, "batch_size": 32}, {"reg_weight": 0.01, "rep_dim": 2048}),
    # vit_b16_cross_datasets.yaml, cross_datasets_train.sh (REG_WEIGHT 0.2 on the command line, merged last)
    ("mmrl-cross-dataset", 16): (
        {"epochs": 1, "batch_size": 32, "warmup_epochs": 0, "crop_scale": 0.5, "lr": 1e-3},
        {"reg_weight": 0.2},
    ),
    # PromptKD configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml, base2new_train.sh (KD 1000, T 1)
    ("promptkd", 16): (
        {**DASSL, "epochs": 20, "batch_size": 8, "lr": 0.005},
        {"n_ctx_vision": 4, "depth_vision": 9, "temperature": 1.0, "kd_weight": 1000.0},
    ),
    # Multi-Modal-Adapter configs/trainers/MultiModalAdapter/vit_b16_ep5.yaml (no warmup; PREC amp)
    ("mma", 16): ({**DASSL, "epochs": 5, "batch_size": 16, "lr": 0.0015, "warmup_epochs": 0}, {"scale": 0.001}),
    # UPT configs/trainers/Unified/vit_b16_ep{50,100,200}.yaml (crops + flips, PREC fp16), CoOp's shots mapping;
    # scripts/unified/base2new_train_*.sh: ep200, ImageNet ep50
    ("upt", 1): ({**DASSL, "epochs": 50, "batch_size": 32, "lr": 0.002}, {}),
    ("upt", 16): ({"epochs": 200}, {}),
    ("upt-base-to-new", 16): ({**DASSL, "epochs": 200, "batch_size": 32}, {}),
    ("upt-base-to-new-imagenet", 16): ({"epochs": 50}, {}),
    # CLIP-Adapter: CoOp's rn50*.yaml commands (COOP.md:18-22), clip_model.float() (clip_adapter.py:128)
    ("clip-adapter", 1): ({**DASSL, "epochs": 50, "batch_size": 32, "lr": 0.002, "precision": "fp32"}, {}),
    ("clip-adapter", 4): ({"epochs": 100}, {}),
    ("clip-adapter", 16): ({"epochs": 200, "augment": True}, {}),
    ("clip-adapter-imagenet", 2): ({"epochs": 50, "precision": "fp32"}, {}),
    # SoftCPT configs/trainers/MTCoOp/vit_b16_ep50.yaml, train.py (PREC fp16)
    ("softcpt", 16): ({**DASSL, "epochs": 50, "batch_size": 32, "lr": 0.002}, {"reference_steps": True}),
    # TPT's CoOp: CoOp's ImageNet config (vit_b16_ep50.yaml); C-TPT's fine-grained script on ImageNet: no AugMix
    # (every TPT recipe: fp16 autocast and a GradScaler(init_scale=1000), tpt_classification.py:62, 149, 290)
    ("tpt", 16): ({}, {"precision": "fp16"}),
    ("tpt-coop", 16): (
        {**DASSL, "epochs": 50, "batch_size": 32},
        {"method": "coop", "options": {"n_ctx": 4}, "precision": "fp16"},
    ),
    ("tpt-ctpt-imagenet", 16): ({}, {"calibration_weight": 50.0, "augmix": False, "precision": "fp16"}),
    # C-TPT scripts/test_tpt_ds.sh: --I_augmix
    ("tpt-ctpt-baseline-natural-shift", 16): ({}, {"augmix": True, "precision": "fp16"}),
    ("tpt-ctpt-baseline-ts", 16): ({}, {"temperature": 1.16, "precision": "fp16"}),  # C-TPT :447, ViT
    # CSP train.py:34-38 (a plain DataLoader: last batch kept), fp16 CLIP, README: evaluates epoch 20 (the last)
    # datasets/composition_dataset.py:47-63: flips, RandomPerspective, RandomRotation(5) of the centre crop
    ("csp-ut-zappos", 16): (
        {
            **{"optimizer": "adam", "lr": 5e-4, "epochs": 20, "drop_last": False, "precision": "fp16"},
            **{"select": "last", "augment": True, "augmentation": "csp"},
        },
        {"vocab_dropout": 0.2},
    ),
    # CoPrompt configs/trainers/coprompt.yaml (two RandAugment views: K_TRANSFORMS 2), trainers/constants.py
    ("coprompt-dtd", 16): (
        {**DASSL, "augmentation": "randaugment", "epochs": 8, "batch_size": 4, "lr": 0.0035},
        {"n_ctx": 2, "depth": 12, "weight": 8.0, "ctx_init": "a photo of a", "frozen_view": "second"},
    ),
    ("coprompt-food101", 16): ({"epochs": 5}, {"n_ctx": 4, "depth": 9, "weight": 0.5}),
    # CuPL classify_imagenet.py: its three classifiers (standard, CuPL, both)
    ("zeroshot-imagenet80", 16): ({}, {"ensemble": "imagenet80"}),
    ("zeroshot-cupl-sentences-imagenet", 16): ({}, {"description_mode": "cupl"}),
    ("zeroshot-cupl-imagenet", 16): ({}, {"ensemble": "imagenet80", "description_mode": "cupl+templates"}),
    # csp README.md: --lr 5e-05 --attr_dropout 0.3 --weight_decay 0.00001, 64 x 2 accumulation, 20 epochs
    ("csp-mit-states", 16): (
        {"optimizer": "adam", "lr": 5e-5, "weight_decay": 1e-5, "epochs": 20, "batch_size": 128},
        {"vocab_dropout": 0.3},
    ),
}


@pytest.mark.parametrize(("name", "shots"), list(RELEASED))
def test_presets_equal_the_releases(name, shots):
    train, options = RELEASED[(name, shots)]
    config = preset(name, shots=shots)
    assert {k: getattr(config, k) for k in train} == train
    assert {k: preset_recipe(name).options[k] for k in options} == options


def test_every_paper_recipe_cites_a_pinned_release_and_valid_protocols():
    for name, recipe in presets().items():
        assert set(recipe.protocols) <= set(PROTOCOLS), name
        assert set(recipe.datasets) <= set(DATASETS), name
        if recipe.protocols:
            assert "@" in recipe.source and ":" in recipe.source.split("@", 1)[1], name
        config = preset(name)
        if config.augment and not METHODS[recipe_method(name)].changes_image_tower:  # trained on augmented views
            assert config.cache_features is not True, f"{name}: cached features of un-augmented images"


def recipe_method(preset_name: str) -> str:
    return max((m for m in METHODS if preset_name == m or preset_name.startswith(f"{m}-")), key=len)


def test_protocol_presets_pick_the_authors_recipe_for_the_protocol_and_dataset():
    assert protocol_preset("coop", "few-shot", "dtd") == "coop"
    assert protocol_preset("coop", "few-shot", "imagenet") == "coop-imagenet"
    assert protocol_preset("coop", "base-to-new", "dtd") == "coop-base-to-new"
    assert protocol_preset("coop", "base-to-new", "imagenet") == "coop-cross-dataset"
    assert protocol_preset("maple", "domain-generalisation") == "maple-cross-dataset"
    assert protocol_preset("promptsrc", "few-shot", "eurosat") == "promptsrc-few-shot-gpa45"
    assert protocol_preset("promptsrc", "few-shot", "caltech101") == "promptsrc-few-shot"
    assert protocol_preset("cocoop", "few-shot") is None  # CoCoOp released no few-shot recipe
    assert protocol_preset("mmrl", "few-shot", "imagenet") == "mmrl-imagenet"  # few_shot.sh: vit_b16_imagenet
    assert protocol_preset("mmrl", "few-shot", "dtd") == "mmrl-few-shot-dtd"
    assert protocol_preset("mmrl", "base-to-new", "dtd") == "mmrl-dtd"
    assert protocol_preset("mmrl", "domain-generalisation") == "mmrl-cross-dataset"
    # DePT's templates.py: mode xd trains the same config on all ImageNet classes
    assert protocol_preset("dept", "cross-dataset", "imagenet") == protocol_preset("dept", "base-to-new") == "dept"
    assert protocol_presets("dept")["domain-generalisation"] == protocol_presets("dept")["base-to-new"]
    assert protocol_presets("maple") == {
        "base-to-new": ["maple"],
        "cross-dataset": ["maple-cross-dataset"],
        "domain-generalisation": ["maple-cross-dataset"],
    }


# ---------------------------------------------------------------- templates
#: CoOp's CUSTOM_TEMPLATES (KaiyangZhou/CoOp trainers/zsclip.py), by registry name.
COOP_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}
#: Authors who used one template everywhere: VP (main_clip.py), VPT-on-CLIP (MaPLe's trainers/vpt.py), CLIP-LoRA
#: (datasets/*.py reassign each template to it).
ONE_TEMPLATE = {"vp": "This is a photo of a {}", "vpt": "a photo of a {}.", "clip-lora": "a photo of a {}."}
#: KgCoOp's CUSTOM_TEMPLATES (KgCoOp/trainers/kgcoop.py) differ from CoOp's on DTD only.
OWN_TABLE = {("kgcoop", "dtd"): "a photo of a {}, a type of texture."}
ONE_TEMPLATE["mma"] = "a photo of a {}."  # MMA's TEXT_CTX_INIT on every dataset
#: TCP's class priors (CUSTOM_TEMPLATES_ori, trainers/tcp.py) differ from CoOp's on three datasets.
OWN_TABLE |= {
    ("tcp", "fgvc_aircraft"): "a photo of an aircraft {}.",
    ("tcp", "food101"): "a photo of a {}, a type of food.",
    ("tcp", "dtd"): "a photo of a {}, a type of texture.",
}


def test_the_registry_holds_coops_templates():
    assert {name: ds.template for name, ds in DATASETS.items()} == COOP_TEMPLATES


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_scores_every_registry_dataset_with_its_authors_template(method):
    cls = METHODS[method]
    for dataset, template in COOP_TEMPLATES.items():
        options = cls.with_dataset_template({}, dataset, DATASETS[dataset].template)
        if cls.template_option is None:
            assert options == {}, (method, dataset)
            continue
        expected = ONE_TEMPLATE.get(method) or OWN_TABLE.get((method, dataset), template)
        value = cls.Config.from_dict(options, method).__dict__[cls.template_option]
        assert value in (expected, [expected]), (method, dataset)


# ---------------------------------------------------------------- the docs and the schedule
def test_reproduction_doc_is_generated_from_the_recipes():
    committed = (REPO / "docs" / "reproduction.md").read_text()
    assert committed == markdown(), "regenerate: python -m vlprompt.engine.recipe_table --out docs/reproduction.md"
    for name in presets():
        assert f"| `{name}` |" in committed


def test_min_lr_is_pytorchs_eta_min_and_zero_changes_nothing():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2e-4)
    torch_lrs = []
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 50, eta_min=1e-6)
    for _ in range(50):
        torch_lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    factor = lr_factor("cosine", 50, 0, base_lr=2e-4, min_lr=1e-6)
    assert [2e-4 * factor(t) for t in range(50)] == pytest.approx(torch_lrs, rel=1e-9)
    plain = lr_factor("dassl-cosine", 10, 1, base_lr=0.002)
    assert [plain(t) for t in range(1, 10)] == [0.5 * (1 + math.cos(math.pi * (t - 1) / 10)) for t in range(1, 10)]


# ---------------------------------------------------------------- the papers' numbers
def test_papers_numbers_load_checked_with_their_sources():
    from vlprompt.data.papers import harmonic_mean, paper_result, paper_results

    results = paper_results()
    assert {r.method for r in results} >= {"zeroshot", "coop", "cocoop", "maple", "ivlp", "vpt", "promptsrc"}
    for r in results:
        if r.protocol == "base-to-new":
            assert harmonic_mean(r.metrics["base"], r.metrics["new"]) == pytest.approx(r.metrics["hm"], abs=0.011)
        assert r.preset is None or r.preset in presets(), r
    # spot values, read from the READMEs cited in each entry's source
    maple = paper_result("maple", "base-to-new", "average")
    assert maple.metrics == {"base": 82.28, "new": 75.14, "hm": 78.55} and "multimodal-prompt-learning@" in maple.source
    promptsrc = paper_result("promptsrc", "base-to-new", "average")
    assert promptsrc.metrics == {"base": 84.26, "new": 76.10, "hm": 79.97} and "PromptSRC@" in promptsrc.source
    assert paper_result("zeroshot", "base-to-new", "average").metrics["new"] == 74.22
    assert paper_result("coop", "base-to-new", "average").preset == "coop-base-to-new"


def test_papers_schema_refuses_an_inconsistent_entry():
    from vlprompt.data.papers import parse_entry
    from vlprompt.errors import DataError

    entry = {
        "method": "x",
        "preset": None,
        "backbone": "ViT-B/16",
        "protocol": "base-to-new",
        "dataset": "average",
        "shots": 16,
        "seeds": 3,
        "epochs": 5,
        "base": 80.0,
        "new": 70.0,
        "hm": 74.67,
        "source": "a/b@c:README.md",
    }
    assert parse_entry(entry).metrics["hm"] == 74.67
    with pytest.raises(DataError, match="not 2bn"):
        parse_entry({**entry, "hm": 75.0})
    with pytest.raises(DataError, match="fields must be"):
        parse_entry({**entry, "accuracy": 1.0})
    with pytest.raises(DataError, match="source must be"):
        parse_entry({**entry, "source": "memory"})
    assert parse_entry({**entry, "teacher": "promptsrc on ViT-L/14"}).teacher == "promptsrc on ViT-L/14"
    assert parse_entry(entry).teacher is None  # optional: only a distilled method's entries have one
    with pytest.raises(DataError, match="teacher must be a string"):
        parse_entry({**entry, "teacher": {"method": "promptsrc"}})
