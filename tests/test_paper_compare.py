"""The bench beside the papers' numbers: which cells match a published entry, the difference, and why not."""

from __future__ import annotations

import json

import pytest

from vlprompt.data.benchmarks import FEW_SHOT_DATASETS
from vlprompt.data.papers import paper_result
from vlprompt.engine.presets import protocol_preset
from vlprompt.evaluation import harmonic_mean
from vlprompt.runs import ClassificationRun, DataConfig, train_overrides
from vlprompt.runs.classification import TRANSDUCTIVE
from vlprompt.runs.paper_compare import flat_cells, paper_backbone, paper_notes, paper_section

B16 = ("ViT-B-16", "openai")
BASE, NEW = 0.85, 0.65
NOT_B16 = "is not the paper's ViT-B/16 (--backbone.name ViT-B-16 --backbone.pretrained openai)"
MPL = "muzairkhattak/multimodal-prompt-learning@69bce21ae8eda80ad6187534b2dce09cf6c59e17:README.md"


def _run(dataset, method="coop", shots=16, protocol="base-to-new", preset="authors", **kw) -> ClassificationRun:
    """A sub-run as the bench makes it: its authors' preset for the protocol and dataset unless ``preset``."""
    split = "base-to-new" if protocol == "base-to-new" else "all"
    return ClassificationRun(
        method=method,
        preset=protocol_preset(method, protocol, dataset) if preset == "authors" else preset,
        data=DataConfig(format="benchmark", dataset=dataset, root="data", shots=shots, class_split=split),
        **kw,
    )


def _average(method="coop", datasets=FEW_SHOT_DATASETS, shots=16, backbone=B16, **kw):
    """The base-to-new note of ``method``'s Average cell over ``datasets`` (base 85 %, new 65 % everywhere)."""
    runs = {(d, method, shots): _run(d, method, shots, **kw) for d in datasets}
    cells = [{"dataset": d, "method": method, "shots": shots, "base": BASE, "new": NEW} for d in datasets]
    cells.append({"dataset": "Average", "method": method, "shots": shots, "base": BASE, "new": NEW})
    for c in cells:
        c["hm"] = harmonic_mean(c["base"], c["new"])
    notes = paper_notes("base-to-new", cells, runs, backbone)
    if method == "zeroshot":  # zero-shot CLIP's numbers are per dataset too (PromptKD's Table 1 image)
        assert [(n["paper"]["dataset"], n["vs_paper"]["matches"]) for n in notes[:-1]] == [(d, True) for d in datasets]
    else:
        assert notes[:-1] == [None] * len(datasets)  # CoOp's base-to-new numbers: the average only
    return notes[-1]


def test_paper_result_matches_shots_where_asked():
    assert paper_result("tip-adapter", "few-shot", "dtd", "RN50", shots=4).shots == 4
    assert paper_result("tip-adapter", "few-shot", "dtd", "RN50", shots=3) is None
    assert paper_result("coop", "base-to-new", "average", shots=16).metrics["hm"] == 71.66
    assert paper_result("coop", "base-to-new", "average").preset == "coop-base-to-new"  # as before: any shots


def test_only_openai_weights_are_the_papers_clip():
    assert paper_backbone("ViT-B-16", "openai") == "ViT-B/16"
    assert paper_backbone("ViT-B-16-quickgelu", "openai") == "ViT-B/16"
    assert paper_backbone("RN50", "openai") == "RN50"
    assert paper_backbone("ViT-B-16", "laion2b_s34b_b79k") is None
    assert paper_backbone("tiny-random-vit", "seed0") is None


def test_the_average_matches_when_backbone_shots_recipe_and_datasets_agree():
    note = _average()  # ImageNet's run trains with coop-cross-dataset: its authors' recipe there
    assert note["paper"]["metrics"] == {"base": 82.69, "new": 63.22, "hm": 71.66}
    assert note["paper"]["source"].startswith(MPL) and note["paper"]["preset"] == "coop-base-to-new"
    assert note["vs_paper"]["matches"] is True
    delta = note["vs_paper"]["delta"]
    assert delta["base"] == pytest.approx(100 * BASE - 82.69) and delta["new"] == pytest.approx(100 * NEW - 63.22)
    assert delta["hm"] == pytest.approx(100 * harmonic_mean(BASE, NEW) - 71.66)
    # What does not change the recipe: an option or field set to the paper's value, bookkeeping fields.
    assert _average(method_options={"n_ctx": 4}, train=train_overrides(precision="fp16", grad_accum=4))["vs_paper"][
        "matches"
    ]
    # Zero-shot CLIP uses no training images: its shots and --train fields are not its recipe.
    zeroshot = _average("zeroshot", train=train_overrides(epochs=2))
    assert zeroshot["paper"]["shots"] == 0 and zeroshot["vs_paper"]["delta"]["new"] == pytest.approx(65 - 74.22)


@pytest.mark.parametrize(
    "kw, reason",
    [
        ({"backbone": ("RN50", "openai")}, f"backbone RN50 (openai) {NOT_B16}"),
        ({"backbone": ("ViT-B-16", "laion2b_s34b_b79k")}, f"backbone ViT-B-16 (laion2b_s34b_b79k) {NOT_B16}"),
        ({"backbone": ("tiny-random-vit", "seed0")}, f"backbone tiny-random-vit (seed0) {NOT_B16}"),
        ({"shots": 4}, "shots 4, the paper's 16"),
        ({"datasets": ["dtd", "eurosat"]}, "the paper averages 11 datasets, this bench 2"),
        ({"train": train_overrides(epochs=5)}, "recipe differs: --train.epochs 5 (the paper's 50, 200 by dataset)"),
        ({"train": train_overrides(augment=False)}, "recipe differs: --train.augment false (the paper's true)"),
        ({"method_options": {"n_ctx": 16}}, "recipe differs: --method_options n_ctx 16 (the paper's 4)"),
        ({"preset": "coop"}, "recipe differs: preset coop (the paper's coop-cross-dataset, coop-base-to-new by "
                             "dataset)"),
    ],
)  # fmt: skip
def test_each_reason_an_average_is_not_comparable(kw, reason):
    note = _average(**kw)
    assert note["paper"]["metrics"]["hm"] == 71.66 and note["vs_paper"] == {"matches": False, "reason": reason}


def test_reasons_add_up_and_name_the_datasets_they_concern():
    runs = {("dtd", "coop", 2): _run("dtd", shots=2), ("eurosat", "coop", 2): _run("eurosat", shots=2, preset="coop")}
    cells = [{"dataset": "Average", "method": "coop", "shots": 2, "base": BASE, "new": NEW, "hm": 0.7}]
    cells += [{**cells[0], "dataset": d} for d in ("dtd", "eurosat")]
    [note, *_] = paper_notes("base-to-new", cells, runs, ("tiny-random-vit", "seed0"))
    assert note["vs_paper"]["reason"] == (
        "backbone tiny-random-vit (seed0) is not the paper's ViT-B/16 (--backbone.name ViT-B-16 --backbone.pretrained "
        "openai); shots 2, the paper's 16; the paper averages 11 datasets, this bench 2; recipe differs: preset coop "
        "(the paper's coop-base-to-new) on eurosat"
    )


def test_a_dataset_cell_and_a_baseline_named_by_its_preset():
    """Tip-Adapter's per-dataset few-shot numbers (RN50) and DePT over CoOp (``--methods dept --preset dept-coop``)."""
    rn50 = ("RN50", "openai")

    def note(method, protocol, shots, **kw):
        run = _run("dtd", method, shots, protocol, **kw)
        cell = {"dataset": "dtd", "method": method, "shots": shots, "accuracy": 0.6, "base": 0.8, "new": 0.6}
        return paper_notes(protocol, [cell], {("dtd", method, shots): run}, rn50 if method == "tip-adapter" else B16)[0]

    tip = note("tip-adapter", "few-shot", 4, preset="tip-adapter-dtd")
    entry = paper_result("tip-adapter", "few-shot", "dtd", "RN50", shots=4)
    assert tip["vs_paper"] == {"matches": True, "delta": {"accuracy": pytest.approx(60 - entry.metrics["accuracy"])}}
    default = note("tip-adapter", "few-shot", 4, preset=None)  # the method's own default recipe
    assert default["vs_paper"]["reason"] == "recipe differs: preset tip-adapter (the paper's tip-adapter-dtd)"
    assert (
        note("tip-adapter", "few-shot", 3, preset="tip-adapter-dtd")["vs_paper"]["reason"] == "shots 3, the paper's 4"
    )
    dept = note("dept", "base-to-new", 16, preset="dept-coop")
    assert dept["paper"]["method"] == "dept-coop" and dept["vs_paper"]["matches"]
    assert dept["vs_paper"]["delta"]["base"] == pytest.approx(
        80 - paper_result("dept-coop", "base-to-new", "dtd").metrics["base"]
    )
    assert note("dept", "base-to-new", 16) is None  # DePT's own default (CoOp's random tokens): no published number
    assert note("coop", "base-to-new", 16) is None  # CoOp's base-to-new numbers are the average only


def test_no_notes_outside_the_registry_datasets_and_the_papers_protocols():
    cell = {"dataset": "colours", "method": "coop", "shots": 16, "base": BASE, "new": NEW, "hm": 0.7}
    average = {**cell, "dataset": "Average"}
    assert paper_notes("base-to-new", [cell, average], {}, B16) == [None, None]  # the built-in benchmark's views
    czsl = {"dataset": "mit-states", "method": "csp", "world": "closed", "AUC": 0.1}
    assert paper_notes("czsl", [czsl], {("mit-states", "csp", 0): _run("mit-states", "csp")}, B16) == [None]


def test_the_section_and_the_csv_columns():
    note = _average()
    cells = [{"dataset": "Average", "method": "coop", "shots": 16, "base": BASE, "new": NEW, "hm": 0.7367, **note}]
    cells.append({"dataset": "dtd", "method": "coop", "shots": 16, "base": BASE, "new": NEW, "hm": 0.7367})
    text = paper_section("base-to-new", cells)
    assert text.startswith("## The papers' numbers (%, papers.json)\n\nΔ = ours − paper, in points, where backbone")
    row = "| Average | coop | 16 | 85.00 / 65.00 / 73.67 | 82.69 / 63.22 / 71.66 (coop, ViT-B/16, shots 16) | +2.31 / "
    assert row + "+1.78 / +2.01 | [1] |" in text and "| dtd |" not in text
    assert f"\n[1] {MPL} (Results: MaPLe in comparison with existing methods)" in text
    flat = flat_cells(cells)
    assert flat[0]["paper_hm"] == 71.66 and flat[0]["vs_paper"] == "matches"
    assert flat[0]["vs_paper_base"] == pytest.approx(2.31) and "paper" not in flat[0]
    assert flat[1] == cells[1]
    assert paper_section("base-to-new", cells[1:]) == ""


def test_every_complete_base_to_new_table_averages_to_its_average_row():
    """Where a source gives all 11 datasets, the mean of its rows is its Average row (to the rounding of 2
    decimals): the per-dataset numbers were read whole (zero-shot CLIP, the six DePT tables, TCP)."""
    from collections import defaultdict

    from vlprompt.data.papers import paper_results

    tables: dict[tuple[str, str], dict] = defaultdict(dict)
    for r in paper_results():
        if r.protocol == "base-to-new":
            tables[(r.method, r.backbone)][r.dataset] = r.metrics
    complete = {k: t for k, t in tables.items() if "average" in t and set(FEW_SHOT_DATASETS) <= set(t)}
    assert {"zeroshot", "tcp", "dept-coop", "dept-maple"} <= {method for method, _ in complete}
    for (method, backbone), table in complete.items():
        for metric in ("base", "new"):
            mean = sum(table[d][metric] for d in FEW_SHOT_DATASETS) / len(FEW_SHOT_DATASETS)
            assert mean == pytest.approx(table["average"][metric], abs=0.01), (method, backbone, metric)


def test_every_complete_transfer_table_averages_to_its_average_row():
    """Cross-dataset tables (PromptKD's, DePT's seven): the mean of the 10 targets is the Average read; DePT's
    domain-generalisation rows give the source and the 4 variants. A cross-dataset cell of DePT over CoOp (its
    preset) and of PromptKD's per-target student (shots 0) are compared to them."""
    from collections import defaultdict

    from vlprompt.data.benchmarks import IMAGENET_VARIANTS
    from vlprompt.data.papers import paper_results

    tables: dict[tuple[str, str], dict] = defaultdict(dict)
    for r in paper_results():
        if r.protocol in ("cross-dataset", "domain-generalisation"):
            tables[(r.method, r.protocol)][r.dataset] = r.metrics["accuracy"]
    targets = [d for d in FEW_SHOT_DATASETS if d != "imagenet"]
    cross = {m for (m, p), t in tables.items() if p == "cross-dataset" and set(targets) <= set(t)}
    assert cross == {"promptkd", "dept-coop", "dept-cocoop", "dept-kgcoop", "dept-maple", "dept-clip-adapter",
                     "dept-vpt", "dept-promptsrc", "coop", "cocoop", "maple", "promptsrc"}  # fmt: skip
    for method in cross:
        table = tables[(method, "cross-dataset")]
        assert sum(table[d] for d in targets) / 10 == pytest.approx(table["average"], abs=0.01), method
    for method in ("dept-coop", "dept-cocoop", "dept-kgcoop", "dept-maple"):
        assert set(tables[(method, "domain-generalisation")]) == {"imagenet", *IMAGENET_VARIANTS}
    run = _run("dtd", "dept", 16, "cross-dataset", preset="dept-coop")
    cell = {"dataset": "dtd", "method": "dept", "shots": 16, "accuracy": 0.5}
    [note] = paper_notes("cross-dataset", [cell], {("imagenet", "dept", 16): run}, B16)  # the prompt trained there
    assert note["paper"]["metrics"]["accuracy"] == 43.17
    assert note["vs_paper"]["delta"]["accuracy"] == pytest.approx(50 - 43.17)
    maple = _run("imagenet", "maple", 16, "cross-dataset")  # its authors' cross-dataset recipe, trained on ImageNet
    assert maple.preset == "maple-cross-dataset"
    cell = {"dataset": "eurosat", "method": "maple", "shots": 16, "accuracy": 0.5}
    [note] = paper_notes("cross-dataset", [cell], {("imagenet", "maple", 16): maple}, B16)
    assert note["paper"]["metrics"]["accuracy"] == 48.06 and note["vs_paper"]["matches"]
    student = _run("dtd", "promptkd", 0, "cross-dataset", method_options={"teacher": "zeroshot"})
    assert student.preset == "promptkd-cross-dataset"
    cell = {"dataset": "dtd", "method": "promptkd", "shots": 0, "accuracy": 0.5}
    [note] = paper_notes("cross-dataset", [cell], {("dtd", "promptkd", 0): student}, B16)
    assert note["paper"]["metrics"]["accuracy"] == 55.08 and not note["vs_paper"]["matches"]
    assert "teacher" in note["vs_paper"]["reason"] and "promptsrc on ViT-L/14" in note["vs_paper"]["reason"]


def _teacher_prompt(directory, method: str, model: str, pretrained: str):
    """A prompt directory's prompt.json as a trained teacher's records it (what the comparison reads)."""
    directory.mkdir(parents=True)
    config = {"format": "vlprompt-prompt", "format_version": 2, "method": method, "config": {},
              "backbone": {"model": model, "pretrained": pretrained},
              "labels": {"kind": "classes", "names": ["a"]}}  # fmt: skip
    (directory / "prompt.json").write_text(json.dumps(config))
    return directory


def test_a_distilled_cell_compares_its_teacher_not_the_teacher_path(tmp_path):
    """PromptKD's teacher option is a path: the comparison says what the teacher is (method on backbone) beside the
    paper's, and a teacher such as the paper's (PromptSRC on ViT-L/14) matches whatever its path."""

    def note(teacher, **options):
        data = DataConfig(format="benchmark", dataset="dtd", root="data", shots=0, class_split=TRANSDUCTIVE)
        run = ClassificationRun(method="promptkd", preset="promptkd-kd200", data=data, seeds=[3],
                                method_options={"teacher": teacher, **options})  # fmt: skip
        cell = {"dataset": "dtd", "method": "promptkd", "shots": 0, "base": BASE, "new": NEW, "hm": 0.7}
        return paper_notes("base-to-new", [cell], {("dtd", "promptkd", 0): run}, B16)[0]["vs_paper"]

    paper = _teacher_prompt(tmp_path / "runs" / "seed3" / "prompt", "promptsrc", "ViT-L-14", "openai")
    assert note(str(paper))["matches"]
    assert note(str(tmp_path / "runs" / "seed{seed}" / "prompt"))["matches"]  # each seed's teacher, read at seed 3
    coop = _teacher_prompt(tmp_path / "coop", "coop", "ViT-B-16", "openai")
    assert note(str(coop))["reason"] == "recipe differs: teacher coop on ViT-B/16 (the paper's promptsrc on ViT-L/14)"
    assert note("zeroshot")["reason"] == (
        "recipe differs: teacher zeroshot on ViT-B/16 (the paper's promptsrc on ViT-L/14)"
    )  # the student's own backbone, un-prompted
    zeroshot_l14 = note("zeroshot", teacher_backbone="ViT-L-14", teacher_pretrained="openai")
    assert zeroshot_l14["reason"] == note("zeroshot")["reason"]  # the zero-shot teacher ignores teacher_backbone
    assert note(str(coop), teacher_backbone="ViT-L-14", teacher_pretrained="laion2b_s32b_b82k")["reason"] == (
        "recipe differs: teacher coop on ViT-L-14 (laion2b_s32b_b82k) (the paper's promptsrc on ViT-L/14)"
    )
    assert "teacher " + str(tmp_path / "nowhere") + " (unreadable: " in note(str(tmp_path / "nowhere"))["reason"]
