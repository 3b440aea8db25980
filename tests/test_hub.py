"""Prompts on the Hugging Face Hub: ``hf-hub:`` names loaded offline from a real HF cache, and ``vlprompt push``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants, scan_cache_dir
from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision, _create_symlink, repo_folder_name

from vlprompt import Predictor
from vlprompt.backbones import tiny_random_backbone
from vlprompt.bank import PromptBank, save_bank
from vlprompt.cli import main
from vlprompt.errors import PromptFileError
from vlprompt.hub import HubError, _snapshot, local_prompt_dir, parse_hub_name
from vlprompt.methods import CoOp, CoOpConfig
from vlprompt.prompts import CONFIG_FILE, TENSORS_FILE, save_pretrained

CLASSES = ["blue_square", "gold", "green_square", "red_square"]


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty HF cache that huggingface_hub uses (offline, as every test runs)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert constants.HF_HUB_OFFLINE  # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported
    _snapshot.cache_clear()
    yield cache
    _snapshot.cache_clear()


def cache_repo(cache: Path, repo_id: str, folder: Path, commit: str, refs=("main",)) -> Path:
    """Put ``folder``'s files into the HF cache as ``repo_id`` at ``commit``, as a download would: content-addressed
    blobs/, snapshots/<commit>/ symlinks and refs/<branch> (huggingface_hub's own helpers); returns the snapshot."""
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = storage / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        target = storage / "snapshots" / commit / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        _create_symlink(str(blob), str(target), new_blob=False)
    for ref in refs:
        _cache_commit_hash_for_specific_revision(str(storage), ref, commit)
    return storage / "snapshots" / commit


def _prompt(tmp_path: Path, seed: int = 0, name: str = "prompt") -> Path:
    backbone = tiny_random_backbone("vit")
    torch.manual_seed(seed)
    method = CoOp(backbone, CLASSES, CoOpConfig(n_ctx=4))
    with torch.no_grad():
        method.ctx.normal_()
    return save_pretrained(method, backbone, tmp_path / name)


def test_the_cache_layout_is_huggingface_hubs_own(tmp_path, hub_cache):
    cache_repo(hub_cache, "org/coop", _prompt(tmp_path), "a" * 40, refs=("main", "v1"))
    (repo,) = scan_cache_dir(hub_cache).repos
    assert repo.repo_id == "org/coop" and repo.repo_type == "model"
    (revision,) = repo.revisions
    assert revision.commit_hash == "a" * 40 and revision.refs == {"main", "v1"}
    assert sorted(f.file_name for f in revision.files) == [CONFIG_FILE, TENSORS_FILE]


def test_hf_hub_prompt_loads_offline_from_the_cache_like_the_local_folder(tmp_path, hub_cache, image_root, monkeypatch):
    local = _prompt(tmp_path)
    snapshot = cache_repo(hub_cache, "org/coop", local, "b" * 40, refs=("main", "v1"))
    calls = []
    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(k) or real(*a, **k))
    images = sorted(str(p) for p in image_root.rglob("*.png"))[:4]
    expected = Predictor.from_pretrained(local).probabilities(images)
    for name in ("hf-hub:org/coop", "hf-hub:org/coop@v1", f"hf-hub:org/coop@{'b' * 40}"):
        assert local_prompt_dir(name) == snapshot
        predictor = Predictor.from_pretrained(name)  # the backbone the prompt records, as for a folder
        assert torch.equal(predictor.probabilities(images), expected)
    assert calls and all(k["allow_patterns"] == ["*.json", "*.safetensors"] for k in calls)  # nothing else fetched


def test_cli_predict_and_eval_take_hf_hub_prompts(tmp_path, hub_cache, image_root, split_file, capsys):
    local = _prompt(tmp_path)
    cache_repo(hub_cache, "org/coop", local, "c" * 40)
    image = str(next(image_root.rglob("*.png")))
    outputs = []
    for prompt in (str(local), "hf-hub:org/coop"):
        assert main(["predict", image, "--prompt", prompt, "--json", "true"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1] and outputs[0][0]["image"] == image
    data = ["--data.root", str(image_root), "--data.split_file", str(split_file)]
    metrics = []
    for prompt in (str(local), "hf-hub:org/coop"):
        assert main(["eval", "--prompt", prompt, *data]) == 0
        metrics.append(json.loads(capsys.readouterr().out))
    assert metrics[1]["prompt"] == "hf-hub:org/coop"
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"] and metrics[0]["n"] == metrics[1]["n"] > 0


def test_banks_load_from_the_hub(tmp_path, hub_cache, image_root, capsys):
    backbone = tiny_random_backbone("vit")
    prompts = {}
    for seed, task in enumerate(("colour", "shape")):
        torch.manual_seed(seed)
        prompts[task] = CoOp(backbone, CLASSES, CoOpConfig(n_ctx=2))
    local = save_bank(prompts, backbone, tmp_path / "bank")
    cache_repo(hub_cache, "org/bank", local, "d" * 40)
    bank = PromptBank.from_pretrained("hf-hub:org/bank")
    assert bank.names == ["colour", "shape"]
    assert torch.equal(bank["shape"].ctx, prompts["shape"].ctx)
    image = str(next(image_root.rglob("*.png")))
    assert main(["predict", image, "--prompt", "hf-hub:org/bank", "--task", "colour,shape", "--json", "true"]) == 0
    assert set(json.loads(capsys.readouterr().out)[0]) == {"image", "colour", "shape"}
    # and a bank command gathers Hub prompts
    cache_repo(hub_cache, "org/coop", _prompt(tmp_path), "e" * 40)
    out = tmp_path / "gathered"
    assert (
        main(["bank", "--prompts", "{a: hf-hub:org/coop, b: " + str(local / "01-shape") + "}", "--out", str(out)]) == 0
    )
    assert PromptBank.from_pretrained(out).names == ["a", "b"]


def test_checksums_are_verified_after_download(tmp_path, hub_cache):
    local = _prompt(tmp_path)
    other = _prompt(tmp_path, seed=1, name="other")  # same names and shapes, other values
    shutil.copyfile(other / TENSORS_FILE, local / TENSORS_FILE)  # a tampered upload: prompt.json's checksum is stale
    cache_repo(hub_cache, "org/tampered", local, "f" * 40)
    with pytest.raises(PromptFileError, match="is corrupted: its tensors do not match the tensors_sha256"):
        Predictor.from_pretrained("hf-hub:org/tampered")


def test_absent_from_the_cache_offline_is_a_one_line_error(hub_cache):
    with pytest.raises(HubError) as err:
        Predictor.from_pretrained("hf-hub:org/absent@v2")
    message = str(err.value)
    assert "\n" not in message and message.startswith("hf-hub:org/absent@v2 is not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE is set" in message and "`hf download org/absent --revision v2 --include" in message


@pytest.mark.parametrize(
    "name", ["hf-hub:coop", "hf-hub:a/b/c", "hf-hub:org/na me", "hf-hub:org/name@", "hf-hub:/name", "hf-hub:org/--x"]
)
def test_malformed_hub_names_are_one_line_errors(name, hub_cache, tmp_path, capsys):
    with pytest.raises(HubError, match="is not a Hub prompt name") as err:
        parse_hub_name(name)
    assert "\n" not in str(err.value)
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    assert main(["predict", str(image), "--prompt", name]) == 2  # before any model is loaded
    assert "is not a Hub prompt name" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ push
def _train_run(tmp_path: Path, image_root: Path, split_file: Path) -> Path:
    out = tmp_path / "run"
    args = ["train", "--backbone.name", "tiny-random-vit", "--data.root", str(image_root), "--data.split_file",
            str(split_file), "--data.shots", "4", "--train.epochs", "1", "--train.batch_size", "8", "--seeds", "[1]",
            "--out", str(out), "--method_options", "{n_ctx: 4}"]  # fmt: skip
    assert main(args) == 0
    return out


@pytest.fixture()
def uploads(monkeypatch):
    """HfApi's repository calls, recorded; upload_folder keeps the folder's files (bytes) as they would go up."""
    calls: dict[str, list] = {"create_repo": [], "create_branch": [], "upload_folder": []}

    def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message=None, **kwargs):
        files = {str(p.relative_to(folder_path)): p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()}
        calls["upload_folder"].append({"repo_id": repo_id, "revision": revision, "message": commit_message,
                                       "files": files})  # fmt: skip
        return "https://huggingface.co/org/x/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **k: calls["create_repo"].append((repo_id, k)))
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, **k: calls["create_branch"].append((repo_id, k)))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_the_prompt_and_a_model_card(tmp_path, image_root, split_file, uploads, hub_cache, capsys):
    out = _train_run(tmp_path, image_root, split_file)
    prompt = out / "seed1" / "prompt"
    results = json.loads((out / "seed1" / "results.json").read_text())
    capsys.readouterr()
    assert main(["push", str(prompt), "org/pets-coop", "--revision", "v1", "--private", "true"]) == 0
    assert "load it with --prompt hf-hub:org/pets-coop" in capsys.readouterr().out
    assert uploads["create_repo"] == [("org/pets-coop", {"private": True, "exist_ok": True})]
    assert uploads["create_branch"] == [("org/pets-coop", {"branch": "v1", "exist_ok": True})]
    (upload,) = uploads["upload_folder"]
    assert upload["repo_id"] == "org/pets-coop" and upload["revision"] == "v1"
    files = upload["files"]
    assert sorted(files) == ["README.md", CONFIG_FILE, TENSORS_FILE]
    assert files[CONFIG_FILE] == (prompt / CONFIG_FILE).read_bytes()
    assert files[TENSORS_FILE] == (prompt / TENSORS_FILE).read_bytes()

    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "vlprompt" and "coop" in card.data.tags
    text = card.text
    assert "| method | `coop` |" in text and '"n_ctx": 4' in text
    assert "| backbone | `tiny-random-vit` (" in text and '"embed_dim"' in text  # the backbone identity
    assert f"| dataset | `{split_file}` |" in text and "| shots | 4 |" in text and "| seed | 1 |" in text
    assert "| recipe | preset `coop`: epochs 1, batch_size 8, optimizer sgd, lr 0.002" in text
    results_table = text[text.index("## Results") :]
    assert "| accuracy |" in results_table and f"| {results['accuracy']:.4f} |" in results_table
    assert 'Predictor.from_pretrained("hf-hub:org/pets-coop")' in text
    assert "vlprompt predict image.jpg --prompt hf-hub:org/pets-coop" in text

    # what was uploaded loads back through the Hub cache as the same prompt
    uploaded = tmp_path / "uploaded"
    for name, blob in files.items():
        (uploaded / name).parent.mkdir(parents=True, exist_ok=True)
        (uploaded / name).write_bytes(blob)
    cache_repo(hub_cache, "org/pets-coop", uploaded, "1" * 40, refs=("v1",))
    image = str(next(image_root.rglob("*.png")))
    assert torch.equal(
        Predictor.from_pretrained("hf-hub:org/pets-coop@v1").probabilities([image]),
        Predictor.from_pretrained(prompt).probabilities([image]),
    )


def test_push_of_a_bank_and_refusals_before_any_upload(tmp_path, uploads, capsys):
    backbone = tiny_random_backbone("vit")
    bank = save_bank({"a": CoOp(backbone, CLASSES, CoOpConfig(n_ctx=2))}, backbone, tmp_path / "bank")
    (bank / "00-a" / "notes.pt").write_bytes(b"\x80 not uploaded")
    assert main(["push", str(bank), "org/bank"]) == 0
    (upload,) = uploads["upload_folder"]
    assert sorted(upload["files"]) == ["00-a/prompt.json", "00-a/prompt.safetensors", "README.md", "bank.json"]
    assert (
        "prompt bank" in upload["files"]["README.md"].decode() and "--task a" in upload["files"]["README.md"].decode()
    )

    tampered = _prompt(tmp_path)
    shutil.copyfile(_prompt(tmp_path, seed=1, name="other") / TENSORS_FILE, tampered / TENSORS_FILE)
    assert main(["push", str(tampered), "org/x"]) == 2
    assert "is corrupted" in capsys.readouterr().err
    assert main(["push", str(_prompt(tmp_path, name="ok")), "not-a-repo"]) == 2
    assert "is not a Hub prompt name" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "missing"), "org/x"]) == 2
    assert len(uploads["upload_folder"]) == 1 and len(uploads["create_repo"]) == 1  # none of the refused ones
