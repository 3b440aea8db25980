"""Bad input through the CLI: one clear message on stderr, exit code 2, no traceback (issue 12's matrix).

Each case builds its bad input in a fresh folder and runs ``vlprompt.cli.main``. Every case checks the
exit code, that no traceback is printed, that the message comes first and holds a key phrase, that torch's
advice to load with ``weights_only=False`` is never echoed, and that no malicious pickle ran (each one
would create a file). Runs on the tiny random model; the trained run all resume cases copy is made once.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from test_cli import make_czsl
from test_safety import TINY, _train_args, tiny_arch  # noqa: F401 - tiny_arch is a fixture used below

from vlprompt.backbones import tiny_random_backbone
from vlprompt.cli import main, quiet_third_party_logs
from vlprompt.data.czsl import DEFAULT_SPLIT
from vlprompt.labels import PairSpace, Task, TaskSpace
from vlprompt.methods import build_method
from vlprompt.prompts import save_pretrained


class _Evil:
    """Unpickling this creates ``path``: the file each malicious-pickle case checks for."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_pickle(path: Path, pwned: Path) -> Path:
    torch.save({"state": _Evil(pwned)}, path)
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@dataclass
class Env:
    """The inputs a case breaks: fresh copies in ``tmp`` (except the read-only fixture datasets)."""

    tmp: Path
    images: Path  # read-only fixture ImageFolder tree
    split: Path  # its CoOp split file
    czsl: Path  # a writable copy of a small CZSL dataset
    run: Path  # a writable copy of a finished train run (seed1/checkpoint.pt, cache/)
    trained: Path  # the original run (its feature cache is part of its command line)
    prompts: Path  # writable copies of saved prompts: coop/, probe/, zeroshot/
    pwned: Path  # created if a malicious pickle is ever unpickled

    @property
    def image(self) -> str:
        return str(self.images / "gold" / "0.png")

    def train(self, *extra: str, out: Path | None = None) -> list[str]:
        return _train_args(self.images, self.split, out or self.tmp / "out", *extra)

    def resume(self, *extra: str) -> list[str]:
        """The trained run's own command line, resumed in the copy."""
        return [*trained_args(self.images, self.split, self.trained, self.run), "--resume", "true", *extra]

    def predict(self, *extra: str) -> list[str]:
        return ["predict", self.image, *extra]

    def czsl_args(self, *extra: str) -> list[str]:
        return ["czsl", *TINY, "--data.root", str(self.czsl), "--seeds", "[1]", "--out", str(self.tmp / "czsl"), *extra]

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def edit_json(self, path: Path, edit: Callable[[dict], None]) -> Path:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
        return path

    def split_with(self, edit: Callable[[dict], None]) -> Path:
        return self.edit_json(Path(shutil.copy(self.split, self.tmp / "split.json")), edit)

    def image_tree(self, name: str = "tree") -> Path:
        return make_image_folder(self.tmp / name, per_class=2)


def trained_args(images: Path, split: Path, trained: Path, out: Path) -> list[str]:
    """The command line of the run every resume case copies (with its persisted feature cache)."""
    return _train_args(images, split, out, "--feature_cache_dir", str(trained / "cache"))


@dataclass
class Case:
    argv: list[str]
    phrase: str
    check: Callable[[], None] | None = None


def _no_file(path: Path) -> Callable[[], None]:
    def check() -> None:
        assert not path.exists(), f"{path} should not exist"

    return check


def _opts(options: str, method: str = "coop") -> list[str]:
    return ["--method", method, "--method_options", options]


def _imagefolder(train: Path, test: Path, *extra: str) -> list[str]:
    return ["--data.format", "imagefolder", "--data.train_dir", str(train), "--data.test_dir", str(test), *extra]


def _corrupt(path: Path, content: bytes = b"not an image") -> Path:
    path.write_bytes(content)
    return path


def _eval_data(env: Env) -> list[str]:
    return ["--data.root", str(env.images), "--data.split_file", str(env.split)]


def _fit_prompt_to(env: Env, name: str, edit: Callable[[dict], None]) -> str:
    return str(env.edit_json(env.prompts / name / "prompt.json", edit).parent)


CASES: dict[str, Callable[[Env], Case]] = {
    # ------------------------------------------------------------------ parse errors: the error comes first
    "parse: not an integer": lambda e: Case(e.train("--train.epochs", "abc"), "--train.epochs: expected an integer"),
    "parse: unknown option": lambda e: Case(e.train("--bogus", "1"), "unrecognized arguments: --bogus"),
    "parse: no prefix abbreviation": lambda e: Case(e.train("--train.epoch", "3"), "unrecognized arguments"),
    "parse: unknown command": lambda e: Case(["trian"], "invalid choice: 'trian'"),
    "parse: seeds not a list": lambda e: Case(e.train("--seeds", "1"), "--seeds: expected"),
    "parse: method options not a dict": lambda e: Case(e.train("--method_options", "{n_ctx"), "--method_options"),
    # ------------------------------------------------------------------ method options: type and range
    "options: n_ctx four": lambda e: Case(e.train(*_opts("{n_ctx: four}")), "coop option n_ctx must be an integer"),
    "options: n_ctx -2": lambda e: Case(e.train(*_opts("{n_ctx: -2}")), "coop option n_ctx must be >= 1"),
    "options: n_ctx 0": lambda e: Case(e.train(*_opts("{n_ctx: 0}")), "must be >= 1, not 0"),
    "options: n_ctx float": lambda e: Case(e.train(*_opts("{n_ctx: 2.5}")), "must be an integer, not 2.5"),
    "options: class position typo": lambda e: Case(
        e.train(*_opts("{class_token_position: middel}")), "must be one of ['end', 'middle', 'front']"
    ),
    "options: negative init_std": lambda e: Case(
        e.train(*_opts("{init_std: -1}")), "coop option init_std must be >= 0"
    ),
    "options: bool as word": lambda e: Case(e.train(*_opts("{class_specific: maybe}")), "must be true or false"),
    "options: unknown name": lambda e: Case(e.train(*_opts("{nctx: 4}")), "unknown option(s) ['nctx'] for method coop"),
    "options: cocoop meta_reduction 0": lambda e: Case(
        e.train(*_opts("{meta_reduction: 0}", "cocoop")), "cocoop option meta_reduction must be >= 1"
    ),
    "options: linear-probe init": lambda e: Case(
        e.train(*_opts("{init: zeros}", "linear-probe")), "must be one of ['random', 'zeroshot']"
    ),
    "options: zeroshot ensemble typo": lambda e: Case(
        e.train(*_opts("{ensemble: imagenet81}", "zeroshot")), "zeroshot option ensemble must be one of"
    ),
    "options: zeroshot templates not a list": lambda e: Case(
        e.train(*_opts("{templates: 'a {}'}", "zeroshot")), "zeroshot option templates must be a list"
    ),
    "options: csp vocab_dropout": lambda e: Case(
        e.czsl_args(*_opts("{vocab_dropout: 1.5}", "csp")), "must be in [0.0, 1.0], not 1.5"
    ),
    "options: pair-projection hidden": lambda e: Case(
        e.czsl_args(*_opts("{hidden: -1}", "pair-projection")), "pair-projection option hidden must be >= 0"
    ),
    # ------------------------------------------------------------------ the recipe and the run
    "train: negative warmup": lambda e: Case(
        e.train("--train.warmup_epochs", "-5"), "--train.warmup_epochs must be >= 0"
    ),
    "train: schedule typo": lambda e: Case(e.train("--train.schedule", "cosin"), "--train.schedule must be one of"),
    "train: optimizer typo": lambda e: Case(e.train("--train.optimizer", "lion"), "--train.optimizer must be one of"),
    "train: precision typo": lambda e: Case(e.train("--train.precision", "fp8"), "--train.precision must be one of"),
    "train: zero lr": lambda e: Case(e.train("--train.lr", "0"), "--train.lr must be > 0"),
    "train: zero epochs": lambda e: Case(e.train("--train.epochs", "0"), "--train.epochs must be >= 1"),
    "train: zero batch": lambda e: Case(e.train("--train.batch_size", "0"), "--train.batch_size must be >= 1"),
    "train: label smoothing 1.5": lambda e: Case(
        e.train("--train.label_smoothing", "1.5"), "label_smoothing must be < 1"
    ),
    "train: checkpoint_every 0": lambda e: Case(
        e.train("--train.checkpoint_every", "0"), "checkpoint_every must be >= 1"
    ),
    "train: negative checkpoint steps": lambda e: Case(
        e.train("--train.checkpoint_every_steps", "-1"), "--train.checkpoint_every_steps must be >= 0"
    ),
    "train: select best without eval": lambda e: Case(e.train("--train.select", "best"), "--train.eval_every 1"),
    "train: unknown preset": lambda e: Case(e.train("--preset", "foo"), "unknown preset 'foo'"),
    "train: empty seeds": lambda e: Case(e.train("--seeds", "[]"), "--seeds is empty"),
    "train: negative shots": lambda e: Case(e.train("--data.shots", "-3"), "--data.shots must be >= 0"),
    "train: format typo": lambda e: Case(e.train("--data.format", "csv"), "--data.format must be one of"),
    "train: class split typo": lambda e: Case(
        e.train("--data.class_split", "half"), "--data.class_split must be one of"
    ),
    "train: imagefolder without test_dir": lambda e: Case(
        e.train("--data.format", "imagefolder", "--data.train_dir", str(e.images)), "--data.test_dir is required"
    ),
    "train: pair method": lambda e: Case(e.train("--method", "csp"), "run it with `vlprompt czsl`"),
    "train: unknown method": lambda e: Case(e.train("--method", "coopp"), "coopp"),
    "czsl: class method": lambda e: Case(e.czsl_args("--method", "coop"), "run it with `vlprompt train`"),
    "czsl: world typo": lambda e: Case(e.czsl_args("--world", "half"), "--world must be one of"),
    "czsl: glove fallback typo": lambda e: Case(
        e.czsl_args("--glove_fallback", "zero"), "--glove_fallback must be one of"
    ),
    "czsl: topk 0": lambda e: Case(e.czsl_args("--topk", "0"), "--topk must be >= 1, not 0"),
    "czsl: no root": lambda e: Case(["czsl", *TINY, "--out", str(e.tmp / "c")], "--data.root is required"),
    "demo: unknown method": lambda e: Case(
        ["demo", "--methods", "[bogus]", "--out", str(e.tmp / "d")], "unknown demo method"
    ),
    "demo: negative shots": lambda e: Case(
        ["demo", "--data.shots", "-1", "--out", str(e.tmp / "d")], "--data.shots must be >= 0"
    ),
    # ------------------------------------------------------------------ backbones
    "backbone: pretrained typo": lambda e: Case(
        e.train("--backbone.name", "ViT-B-32", "--backbone.pretrained", "opnai"), "'opnai' is neither a pretrained tag"
    ),
    "backbone: unknown architecture": lambda e: Case(
        e.train("--backbone.name", "ViT-B-99"), "unknown backbone 'ViT-B-99'"
    ),
    "backbone: unknown bundled": lambda e: Case(
        e.train("--backbone.name", "vlprompt/tiny-shape"), "unknown bundled backbone"
    ),
    "backbone: device typo": lambda e: Case(
        e.train("--backbone.device", "gpu0"), "--backbone.device 'gpu0' is not a device"
    ),
    "backbone: missing file": lambda e: Case(
        e.predict("--backbone.name", str(e.tmp / "none.pt"), "--classes", "a,b"), "does not exist"
    ),
    "backbone: fake TorchScript": lambda e: Case(
        e.predict("--backbone.name", str(_fake_torchscript(e.tmp / "fake.pt")), "--classes", "a,b"),
        "not a valid TorchScript archive",
    ),
    "backbone: zero-byte file": lambda e: Case(
        e.predict("--backbone.name", str(e.file("empty.pt", b"")), "--classes", "a,b"), "the file is empty"
    ),
    "backbone: garbage safetensors": lambda e: Case(
        e.predict("--backbone.name", str(e.file("w.safetensors", b"garbage")), "--classes", "a,b"),
        "not a readable safetensors file",
    ),
    "pickle: OpenAI-format backbone": lambda e: Case(
        e.predict("--backbone.name", str(evil_pickle(e.tmp / "evil.pt", e.pwned)), "--classes", "a,b"),
        "refuses to unpickle",
    ),
    # ------------------------------------------------------------------ predict, eval, interpret
    "predict: topk -2": lambda e: Case(e.predict(*TINY, "--classes", "a,b", "--topk", "-2"), "--topk must be >= 1"),
    "predict: topk 0": lambda e: Case(
        e.predict(*TINY, "--classes", "a,b", "--topk", "0"), "--topk must be >= 1, not 0"
    ),
    "predict: batch size 0": lambda e: Case(
        e.predict(*TINY, "--classes", "a,b", "--batch_size", "0"), "--batch_size must be >= 1"
    ),
    "predict: prompt and classes": lambda e: Case(
        e.predict("--classes", "a", "--prompt", str(e.prompts / "coop")), "either --prompt DIR or --classes"
    ),
    "predict: no class names": lambda e: Case(e.predict(*TINY, "--classes", " , "), "at least one class name"),
    "predict: missing image": lambda e: Case(
        ["predict", str(e.tmp / "none.png"), *TINY, "--classes", "a,b"], "image file not found"
    ),
    "predict: corrupt image": lambda e: Case(
        ["predict", str(e.file("bad.png", b"garbage")), *TINY, "--classes", "a,b"], "cannot read image"
    ),
    "predict: decompression bomb": lambda e: Case(
        ["predict", str(e.file("bomb.png", png_header(20000, 20000))), *TINY, "--classes", "a,b"],
        "decompression bomb",
    ),
    "predict: bundled model on cuda": lambda e: Case(
        e.predict("--classes", "a,b", "--backbone.device", "cuda"), "no CUDA GPU is available"
    ),
    "prompt: missing directory": lambda e: Case(e.predict("--prompt", str(e.tmp / "nope")), "prompt.json not found"),
    "prompt: not JSON": lambda e: Case(
        e.predict("--prompt", str(_write(e.prompts / "coop" / "prompt.json", "{").parent)), "not valid JSON"
    ),
    "prompt: edited n_ctx": lambda e: Case(
        e.predict("--prompt", _fit_prompt_to(e, "coop", lambda c: c["config"].update(n_ctx=4))),
        "tensors do not match coop: shape of ctx [2, 32] (the config needs [4, 32])",
    ),
    "prompt: n_ctx four in prompt.json": lambda e: Case(
        e.predict("--prompt", _fit_prompt_to(e, "coop", lambda c: c["config"].update(n_ctx="four"))),
        "prompt.json: coop option n_ctx must be an integer",
    ),
    "prompt: linear probe on other classes": lambda e: Case(
        e.predict("--prompt", _fit_prompt_to(e, "probe", lambda c: c["labels"]["names"].append("extra"))),
        "tensors do not match linear-probe: shape of head.bias [2] (the config needs [3])",
    ),
    "pickle: prompt tensors": lambda e: Case(
        e.predict("--prompt", str(evil_pickle(e.prompts / "coop" / "prompt.safetensors", e.pwned).parent)),
        "never unpickles prompt files",
    ),
    "eval: linear probe on other classes": lambda e: Case(
        ["eval", "--prompt", str(e.prompts / "probe"), *_eval_data(e)],
        "cannot score other classes",
    ),
    "eval: a pair prompt on a class dataset": lambda e: Case(
        ["eval", "--prompt", str(e.prompts / "csp"), *_eval_data(e)], "scores (attribute, object) pairs"
    ),
    "eval: a multi-task prompt without --task": lambda e: Case(
        ["eval", "--prompt", str(e.prompts / "multitask"), *_eval_data(e)], "name one with --task"
    ),
    "eval: split typo": lambda e: Case(
        ["eval", "--prompt", str(e.prompts / "coop"), *_eval_data(e), "--split", "dev"],
        "--split 'dev' is not in the dataset",
    ),
    "eval: class split typo": lambda e: Case(
        ["eval", "--prompt", str(e.prompts / "coop"), *_eval_data(e), "--class_split", "half"],
        "--class_split must be",
    ),
    "interpret: k 0": lambda e: Case(
        ["interpret", "--prompt", str(e.prompts / "coop"), "--k", "0"], "--k must be >= 1"
    ),
    "interpret: no context": lambda e: Case(
        ["interpret", "--prompt", str(e.prompts / "zeroshot")], "zeroshot has no context vectors"
    ),
    # ------------------------------------------------------------------ data
    "data: missing image": lambda e: Case(e.train("--data.root", str(e.tmp / "nowhere")), "image file not found"),
    "data: missing image names the flag": lambda e: Case(
        e.train("--data.root", str(e.tmp / "nowhere")), "--data.skip_bad_images true"
    ),
    "data: corrupt training image": lambda e: Case(
        e.train(*_imagefolder(_corrupt_first(e.image_tree()), e.images)), "cannot read image"
    ),
    "data: decompression bomb in training": lambda e: Case(
        e.train(*_imagefolder(_corrupt_first(e.image_tree(), png_header(20000, 20000)), e.images)),
        "decompression bomb",
    ),
    "data: split file not JSON": lambda e: Case(
        e.train("--data.split_file", str(e.file("s.json", "{nope"))), "not valid JSON"
    ),
    "data: split file missing": lambda e: Case(
        e.train("--data.split_file", str(e.tmp / "none.json")), "split file not found"
    ),
    "data: split entry malformed": lambda e: Case(
        e.train("--data.split_file", str(e.split_with(lambda s: s["train"].__setitem__(0, ["a.png"])))),
        "train[0] must be [relative path, label, class name]",
    ),
    "data: empty test split, before training": lambda e: Case(
        e.train("--data.split_file", str(e.split_with(lambda s: s.__setitem__("test", [])))),
        "the test split is empty",
        _no_file(e.tmp / "out"),  # nothing was created: the rerun is not blocked
    ),
    "data: K larger than a class": lambda e: Case(e.train("--data.shots", "10"), "fewer than the 10 shots asked"),
    "data: test classes differ": lambda e: Case(
        e.train(*_imagefolder(e.images, make_image_folder(e.tmp / "t", 1, {"cat": (1, 2, 3)}))), "class folders differ"
    ),
    "data: class folder without images": lambda e: Case(
        e.train(*_imagefolder(_empty_class(e.image_tree()), e.images)), "has no images"
    ),
    "czsl: malformed pair file": lambda e: Case(
        e.czsl_args("--data.root", str(_write(e.czsl / DEFAULT_SPLIT / "train_pairs.txt", "red\n").parents[1])),
        "train_pairs.txt:1: expected two names",
    ),
    "czsl: missing metadata": lambda e: Case(
        e.czsl_args("--data.root", str(_unlink(e.czsl / f"metadata_{DEFAULT_SPLIT}.t7").parent)),
        "metadata file not found",
    ),
    "pickle: CZSL metadata": lambda e: Case(
        e.czsl_args("--data.root", str(evil_pickle(e.czsl / f"metadata_{DEFAULT_SPLIT}.t7", e.pwned).parent)),
        "refuses to unpickle",
    ),
    "czsl: missing GloVe file": lambda e: Case(
        e.czsl_args("--word_vectors", str(e.tmp / "glove.txt")), "word-vector file not found"
    ),
    # ------------------------------------------------------------------ run directories and checkpoints
    "out: not empty": lambda e: Case(e.train(out=e.run), "pass --overwrite to replace it or --resume"),
    "out: a file": lambda e: Case(e.train(out=e.file("f.txt", "x")), "exists and is not a directory"),
    "resume: changed config": lambda e: Case(e.resume("--train.lr", "0.5"), "its config differs in ['train']"),
    "resume: zero-byte checkpoint": lambda e: Case(
        e.resume(),
        f"checkpoint {_write(e.run / 'seed1' / 'checkpoint.pt', '')} is corrupted or unreadable: the file is empty",
    ),
    "resume: truncated checkpoint": lambda e: Case(
        e.resume(),
        f"checkpoint {_truncate(e.run / 'seed1' / 'checkpoint.pt')} is corrupted or unreadable: it is truncated",
    ),
    "pickle: checkpoint": lambda e: Case(
        e.resume(),
        f"checkpoint {evil_pickle(e.run / 'seed1' / 'checkpoint.pt', e.pwned)} is corrupted or unreadable: it holds "
        "Python objects other than tensors",
    ),
    "pickle: feature cache": lambda e: Case(
        e.train("--feature_cache_dir", str(_evil_cache(e.run / "cache", e.pwned))), "feature cache file"
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _unlink(path: Path) -> Path:
    path.unlink()
    return path


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:200])
    return path


def _fake_torchscript(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/code/__torch__.py", "not code")
        archive.writestr("archive/data.pkl", "not a pickle")
    return path


def _corrupt_first(tree: Path, content: bytes = b"not an image") -> Path:
    _corrupt(next(iter(sorted(tree.glob("*/0.png")))), content)
    return tree


def _empty_class(tree: Path) -> Path:
    (tree / "zz_empty").mkdir()
    return tree


def _evil_cache(cache: Path, pwned: Path) -> Path:
    tables = list(cache.glob("*.safetensors"))
    assert tables, "the trained run should have persisted its features"
    for table in tables:
        evil_pickle(table, pwned)
    return cache


# ------------------------------------------------------------ issue 17: readers' schemas, names, degenerate inputs


def _bank(env: Env, entries: list[dict] | dict | list) -> Path:
    """A bank folder holding a copy of the coop prompt as member ``00-a``, with ``entries`` as its bank.json prompts."""
    bank = env.tmp / "bank"
    shutil.copytree(env.prompts / "coop", bank / "00-a")
    backbone = json.loads((env.prompts / "coop" / "prompt.json").read_text())["backbone"]
    config = {"format": "vlprompt-prompt-bank", "format_version": 1, "backbone": backbone, "prompts": entries}
    (bank / "bank.json").write_text(json.dumps(config))
    return bank


def _bank_predict(env: Env, entries) -> list[str]:
    return env.predict("--prompt", str(_bank(env, entries)), "--task", "a")


def _prompt_json(env: Env, content: str) -> str:
    return str(_write(env.prompts / "coop" / "prompt.json", content).parent)


def _czsl_without(env: Env, phase: str) -> list[str]:
    path = env.czsl / f"metadata_{DEFAULT_SPLIT}.t7"
    entries = [e for e in torch.load(path, weights_only=True) if e["set"] != phase]
    torch.save(entries, path)
    return env.czsl_args()


def _incontext(env: Env, out: Path) -> list[str]:
    image = f"[{env.image}]"
    return ["incontext", "--examples", image, "--outputs", image, "--queries", image, "--out", str(out)]


def _user_file_kept(path: Path, content: str) -> Callable[[], None]:
    def check() -> None:
        assert path.read_text() == content, f"{path} was changed"
        assert not any(p.name.startswith(("canvas_", "answer_")) for p in path.parent.iterdir())

    return check


def _user_folder_with_file(env: Env) -> Path:
    folder = env.tmp / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    return folder


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)

CASES.update({
    # prompt.json: valid JSON of the wrong shape
    "prompt: JSON list": lambda e: Case(e.predict("--prompt", _prompt_json(e, "[1, 2]")), "must be an object"),
    "prompt: config a string": lambda e: Case(
        e.predict("--prompt", _fit_prompt_to(e, "coop", lambda c: c.update(config="n_ctx=2"))),
        "prompt.json: field 'config' must be an object",
    ),
    "prompt: backbone a list": lambda e: Case(
        e.predict("--prompt", _fit_prompt_to(e, "coop", lambda c: c.update(backbone=[]))), "field 'backbone'"
    ),
    "prompt: backbone without model": lambda e: Case(
        e.predict("--prompt", _fit_prompt_to(e, "coop", lambda c: c["backbone"].pop("model"))), "missing field 'model'"
    ),
    "prompt: class names not strings": lambda e: Case(
        e.predict("--prompt", _fit_prompt_to(e, "coop", lambda c: c["labels"].update(names=[1, 2])), *TINY),
        "names[0] must be a string",
    ),
    "prompt: labels names a number": lambda e: Case(
        e.predict("--prompt", _fit_prompt_to(e, "coop", lambda c: c["labels"].update(names=5)), *TINY),
        "field 'names' must be a list",
    ),
    "prompt: duplicate class names": lambda e: Case(
        e.predict("--prompt", _fit_prompt_to(e, "coop", lambda c: c["labels"].update(names=["gold", "Gold"])), *TINY),
        "class names must be unique",
    ),
    "prompt: format_version a string": lambda e: Case(
        e.predict("--prompt", _fit_prompt_to(e, "coop", lambda c: c.update(format_version="2"))),
        "field 'format_version' must be an integer",
    ),
    "prompt: deeply nested JSON": lambda e: Case(
        e.predict("--prompt", _prompt_json(e, "[" * 100000 + "]" * 100000)), "prompt.json"
    ),
    "prompt: not UTF-8": lambda e: Case(
        e.predict("--prompt", str(e.file("p/prompt.json", b"\xff\xfe{").parent)), "not UTF-8"
    ),
    # bank.json
    "bank: member without path": lambda e: Case(_bank_predict(e, [{"name": "a"}]), "prompts[0]: missing field 'path'"),
    "bank: member leaves the bank": lambda e: Case(
        _bank_predict(e, [{"name": "a", "path": "../prompts/coop"}]), "leaves its folder"
    ),
    "bank: member at an absolute path": lambda e: Case(
        _bank_predict(e, [{"name": "a", "path": str(e.prompts / "coop")}]), "absolute path"
    ),
    "bank: prompts not a list": lambda e: Case(_bank_predict(e, {"a": "00-a"}), "field 'prompts' must be a list"),
    "bank: empty prompts": lambda e: Case(_bank_predict(e, []), "is empty"),
    "bank: member a string": lambda e: Case(_bank_predict(e, ["00-a"]), "prompts'[0] must be an object"),
    "bank: name a number": lambda e: Case(
        _bank_predict(e, [{"name": 1, "path": "00-a"}]), "prompts[0]: field 'name' must be a string"
    ),
    "bank: names equal but for spaces": lambda e: Case(
        _bank_predict(e, [{"name": "a", "path": "00-a"}, {"name": " a ", "path": "00-a/."}]),
        "prompt names must be unique",
    ),
    "bank: one member twice": lambda e: Case(
        _bank_predict(e, [{"name": "a", "path": "00-a"}, {"name": "b", "path": "./00-a"}]),
        "prompt paths must be unique",
    ),
    "bank: bank.json a list": lambda e: Case(
        e.predict("--prompt", str(_write(_bank(e, []) / "bank.json", "[]").parent), "--task", "a"),
        "must be an object",
    ),
    "bank command: task names equal but for spaces": lambda e: Case(
        ["bank", "--prompts", f"{{a: {e.prompts / 'coop'}, ' a': {e.prompts / 'coop'}}}", "--out", str(e.tmp / "b")],
        "--prompts: task names must be unique",
        _no_file(e.tmp / "b"),
    ),
    # split files
    "split: two labels share a class name": lambda e: Case(
        e.train("--data.split_file", str(e.split_with(_same_name_as_label_0(1)))),
        "the class names of its labels must be unique",
        _no_file(e.tmp / "out"),
    ),
    "split: image path leaves the root": lambda e: Case(
        e.train("--data.split_file", str(e.split_with(lambda s: s["train"][0].__setitem__(0, "../../etc/passwd")))),
        "train[0] image path '../../etc/passwd' leaves its folder",
    ),
    "split: absolute image path": lambda e: Case(
        e.train("--data.split_file", str(e.split_with(lambda s: s["test"][0].__setitem__(0, "/etc/passwd")))),
        "absolute path",
    ),
    "split: train not a list": lambda e: Case(
        e.train("--data.split_file", str(e.split_with(lambda s: s.__setitem__("train", {"a": 1})))),
        "'train' must be a list",
    ),
    "split: label a bool": lambda e: Case(
        e.train("--data.split_file", str(e.split_with(lambda s: s["train"][0].__setitem__(1, True)))),
        "train[0] must be [relative path, label, class name]",
    ),
    "split: a JSON list": lambda e: Case(
        e.train("--data.split_file", str(e.file("s.json", "[]"))), "must be an object"
    ),
    "split: a folder": lambda e: Case(e.train("--data.split_file", str(e.tmp)), "is not a file"),
    # names and templates
    "predict: duplicate classes": lambda e: Case(
        e.predict(*TINY, "--classes", "red,red,blue"), "--classes: class names must be unique"
    ),
    "predict: classes equal after normalisation": lambda e: Case(
        e.predict(*TINY, "--classes", "red_car,Red car"), "after normalisation"
    ),
    "predict: template with two {}": lambda e: Case(
        e.predict(*TINY, "--classes", "a,b", "--template", "{} and {}"), "--template '{} and {}' must hold exactly one"
    ),
    "predict: template without {}": lambda e: Case(
        e.predict(*TINY, "--classes", "a,b", "--template", "a photo"), "must hold exactly one '{}'"
    ),
    "predict: template past the context": lambda e: Case(
        e.predict(*TINY, "--classes", "a,longest class", "--template", "photo " * 80 + "of {}"),
        "with the longest class name 'longest class' is",
    ),
    "predict: duplicate tasks": lambda e: Case(
        e.predict("--prompt", str(e.prompts / "coop"), "--task", "a, a"), "--task: task names must be unique"
    ),
    "predict: a missing image before the model": lambda e: Case(
        ["predict", str(e.tmp / "none.png"), "--prompt", str(e.tmp / "nope")], "image file not found"
    ),
    # YAML configs
    "config: alias bomb": lambda e: Case(e.train("--config", str(e.file("bomb.yaml", BOMB))), "expands to more than"),
    "config: recursive alias": lambda e: Case(
        e.train("--config", str(e.file("rec.yaml", "seeds: &a [*a]\n"))), "--config"
    ),
    "config: python tag": lambda e: Case(
        e.train("--config", str(e.file("evil.yaml", f"out: !!python/object/apply:os.mkdir ['{e.pwned}']\n"))),
        "could not determine a constructor",
    ),
    "config: too large": lambda e: Case(
        e.train("--config", str(e.file("big.yaml", "# x\n" * (2 << 20)))), "more than the 4194304"
    ),
    # degenerate inputs
    "czsl: a phase without images": lambda e: Case(_czsl_without(e, "val"), "the val phase has no images"),
    "data check: missing root": lambda e: Case(
        ["data", "check", "dtd", "--data.root", str(e.tmp / "nowhere")], "does not exist"
    ),
    "data check: root is a file": lambda e: Case(
        ["data", "check", "dtd", "--data.root", str(e.file("root.txt", "x"))], "is a file, not a folder"
    ),
    # writing commands
    "incontext: out holds the user's files": lambda e: Case(
        _incontext(e, _user_folder_with_file(e)),
        "vlprompt did not make",
        _user_file_kept(e.tmp / "mine" / "notes.txt", "mine"),
    ),
    "incontext: out is a file": lambda e: Case(
        _incontext(e, e.file("out.txt", "mine")),
        "exists and is not a directory",
        _user_file_kept(e.tmp / "out.txt", "mine"),
    ),
    "incontext: outputs and examples differ in number": lambda e: Case(
        [*_incontext(e, e.tmp / "ic")[:-2], "--outputs", f"[{e.image},{e.image}]", "--out", str(e.tmp / "ic")],
        "1 example input(s) but 2 example output(s)",
        _no_file(e.tmp / "ic"),
    ),
    "bank command: out is a file": lambda e: Case(
        ["bank", "--prompts", f"{{a: {e.prompts / 'coop'}}}", "--out", str(e.file("bank.txt", "mine"))],
        "exists and is not a directory",
        _user_file_kept(e.tmp / "bank.txt", "mine"),
    ),
    # seeds and sweeps
    "train: a seed twice": lambda e: Case(e.train("--seeds", "[1, 1]"), "--seeds: seeds must be unique"),
    "train: a seed beyond 64 bits": lambda e: Case(e.train("--seeds", f"[{2**64}]"), "--seeds: seed"),
    "czsl: a seed twice": lambda e: Case(e.czsl_args("--seeds", "[3, 3]"), "--seeds: seeds must be unique"),
    "demo: a seed twice": lambda e: Case(
        ["demo", "--seeds", "[2, 2]", "--out", str(e.tmp / "d")], "--seeds: seeds must be unique", _no_file(e.tmp / "d")
    ),
    "bench: no datasets": lambda e: Case(_bench(e, "--datasets", "[]"), "--datasets is empty", _no_file(e.tmp / "b")),
    "bench: a method twice": lambda e: Case(
        _bench(e, "--methods", "[zeroshot, zeroshot]"), "--methods: methods must be unique", _no_file(e.tmp / "b")
    ),
    "bench: a dataset twice": lambda e: Case(
        _bench(e, "--datasets", "[builtin, builtin]"), "--datasets: datasets must be unique", _no_file(e.tmp / "b")
    ),
    "bench: a seed twice": lambda e: Case(
        _bench(e, "--seeds", "[1, 1]"), "--seeds: seeds must be unique", _no_file(e.tmp / "b")
    ),
    "bench: shots twice": lambda e: Case(
        _bench(e, "--data.shots", "[2, 2]"), "--data.shots: shots must be unique", _no_file(e.tmp / "b")
    ),
})  # fmt: skip


def _bench(env: Env, *extra: str) -> list[str]:
    """A built-in few-shot bench (refused before any work in every case that uses it)."""
    return ["bench", "few-shot", "--datasets", "[builtin]", "--methods", "[zeroshot]", "--seeds", "[1]",
            "--out", str(env.tmp / "b"), *extra]  # fmt: skip


def _same_name_as_label_0(label: int) -> Callable[[dict], None]:
    """Label ``label`` renamed to label 0's class name in upper case (one name once normalised)."""

    def edit(split: dict) -> None:
        name = next(e[2] for key in ("train", "val", "test") for e in split[key] if e[1] == 0)
        for key in ("train", "val", "test"):
            for entry in split[key]:
                if entry[1] == label:
                    entry[2] = name.upper()

    return edit


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prompts_dir(tmp_path_factory) -> Path:
    backbone = tiny_random_backbone("vit")
    root = tmp_path_factory.mktemp("prompts")
    torch.manual_seed(0)
    for name, method, options in (
        ("coop", "coop", {"n_ctx": 2}),
        ("probe", "linear-probe", {}),
        ("zeroshot", "zeroshot", {}),
    ):
        save_pretrained(build_method(method, backbone, ["red square", "gold"], options), backbone, root / name)
    pairs = PairSpace(("red", "gold"), ("square",), (("red", "square"), ("gold", "square")))
    save_pretrained(build_method("csp", backbone, pairs), backbone, root / "csp")
    tasks = TaskSpace((Task("colour", ("red", "gold")), Task("shape", ("square", "circle"))))
    save_pretrained(build_method("softcpt", backbone, tasks), backbone, root / "multitask")
    return root


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, image_root, split_file) -> Path:
    """A finished one-seed run with its checkpoint and persisted feature cache (the resume cases copy it)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(trained_args(image_root, split_file, out, out)) == 0
    return out


@pytest.fixture(scope="module")
def czsl_root(tmp_path_factory) -> Path:
    return make_czsl(tmp_path_factory.mktemp("czsl") / "data")


@pytest.fixture()
def env(tmp_path, image_root, split_file, czsl_root, trained_run, prompts_dir) -> Env:
    return Env(
        tmp=tmp_path,
        images=image_root,
        split=split_file,
        czsl=Path(shutil.copytree(czsl_root, tmp_path / "czsl_data")),
        run=Path(shutil.copytree(trained_run, tmp_path / "run")),
        trained=trained_run,
        prompts=Path(shutil.copytree(prompts_dir, tmp_path / "prompts")),
        pwned=tmp_path / "PWNED",
    )


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.err


PROGRESS_BAR = re.compile(r"\d+%\||it/s\]|s/it\]")
#: A terminal control sequence (a closing nested progress bar moves the cursor up: nothing is printed).
CURSOR_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def assert_one_clear_message(err: str, phrase: str) -> None:
    lines = [CURSOR_CONTROL.sub("", line) for line in re.split(r"[\r\n]", err)]
    lines = [line for line in lines if line.strip() and not PROGRESS_BAR.search(line)]
    assert lines and lines[0].startswith("vlprompt") and ": error: " in lines[0], err
    assert phrase in err, f"{phrase!r} not in:\n{err}"
    assert "weights_only=False" not in err and "`weights_only` set to `False`" not in err  # torch's advice


# --------------------------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_clear_message(name, env, capsys):
    if "cuda" in name and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    case = CASES[name](env)
    code, err = run_cli(case.argv, capsys)
    assert code == 2, err
    assert_one_clear_message(err, case.phrase)
    assert not env.pwned.exists(), "a malicious pickle was unpickled"
    if case.check is not None:
        case.check()


def test_malicious_open_clip_checkpoint_is_never_unpickled(tiny_arch, tmp_path, image_root, capsys):  # noqa: F811
    pwned = tmp_path / "PWNED"
    evil = evil_pickle(tmp_path / "weights.pt", pwned)
    argv = ["predict", str(image_root / "gold" / "0.png"), "--backbone.name", tiny_arch, "--classes", "a,b"]
    code, err = run_cli([*argv, "--backbone.pretrained", str(evil)], capsys)
    assert code == 2 and not pwned.exists()
    assert_one_clear_message(err, f"--backbone.pretrained {evil}: cannot load it as {tiny_arch} weights")


def test_debug_shows_the_traceback(tmp_path, image_root, split_file):
    with pytest.raises(ValueError, match=r"coop option n_ctx must be >= 1"):
        main(_train_args(image_root, split_file, tmp_path / "o", "--method_options", "{n_ctx: -2}", "--debug"))


def test_an_unexpected_error_is_one_line_with_exit_code_1(monkeypatch, image_root, capsys):
    import vlprompt.predict

    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(vlprompt.predict.Predictor, "zero_shot", broken)
    code, err = run_cli(["predict", str(image_root / "gold" / "0.png"), *TINY, "--classes", "a,b"], capsys)
    assert code == 1 and "RuntimeError: something inside broke" in err and "--debug" in err


def test_open_clip_info_lines_are_hidden_unless_debug():
    handler = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(handler)
    info = logging.LogRecord(
        "root", logging.INFO, f"{os.sep}x{os.sep}open_clip{os.sep}factory.py", 1, "Loaded", None, None
    )
    warning = logging.LogRecord("root", logging.WARNING, info.pathname, 1, "Careful", None, None)
    ours = logging.LogRecord("vlprompt", logging.INFO, "/x/vlprompt/cli.py", 1, "downloading", None, None)
    try:
        quiet_third_party_logs(debug=False)
        assert not handler.filter(info) and handler.filter(warning) and handler.filter(ours)
        quiet_third_party_logs(debug=True)
        assert handler.filter(info)
    finally:
        logging.getLogger().removeHandler(handler)


def test_a_failed_run_does_not_block_its_rerun(tmp_path, image_root, split_file, capsys):
    out = tmp_path / "out"
    assert main(_train_args(image_root, split_file, out, "--data.root", str(tmp_path / "nowhere"))) == 2
    assert not out.exists()
    assert main(_train_args(image_root, split_file, out)) == 0


def test_a_copied_run_resumes(trained_run, tmp_path, image_root, split_file):
    copy = Path(shutil.copytree(trained_run, tmp_path / "moved"))
    assert main([*trained_args(image_root, split_file, trained_run, copy), "--resume", "true"]) == 0


# ------------------------------------------------------------------------- read-only and full file systems


@pytest.fixture()
def mount_tmpfs(tmp_path):
    """Mount a small tmpfs (root only): ``mount(size, read_only)`` returns its path; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or 'not root'})")
        mounted.append(point)
        return point

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_out_on_a_read_only_file_system(mount_tmpfs, tmp_path, image_root, split_file, capsys):
    read_only = mount_tmpfs("1m", read_only=True)
    code, err = run_cli(_train_args(image_root, split_file, read_only / "run"), capsys)
    assert code == 2
    assert_one_clear_message(err, f"cannot write to --out {read_only / 'run'}")


def test_out_in_a_folder_without_write_permission(tmp_path, image_root, split_file, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere; the read-only mount test covers this")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code, err = run_cli(_train_args(image_root, split_file, locked / "run"), capsys)
    assert code == 2
    assert_one_clear_message(err, "cannot write to --out")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_full_disk_is_a_message_and_leaves_the_previous_state_intact(mount_tmpfs, image_root, split_file, capsys):
    disk = mount_tmpfs("2m")
    out = disk / "run"
    assert main(_train_args(image_root, split_file, out)) == 0
    capsys.readouterr()
    before = _tree(out)
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    for size in (1 << 16, 1):  # fill every free byte
        with pytest.raises(OSError) as full:
            while True:
                os.write(fd, b"\0" * size)
        assert full.value.errno == errno.ENOSPC
    os.close(fd)
    code, err = run_cli([*_train_args(image_root, split_file, out), "--resume", "true"], capsys)
    assert code == 2
    assert_one_clear_message(err, "No space left on device")
    assert "free some space" in err and str(out) in err
    assert _tree(out) == before  # every file as it was; no temp file left behind
    filler.unlink()
    assert main([*_train_args(image_root, split_file, out), "--resume", "true"]) == 0  # and it resumes once freed


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 120


def test_interpret_on_the_bundled_model_names_only_meaningful_tokens():
    from vlprompt.backbones import load_backbone

    backbone = load_backbone("vlprompt/tiny-shapes")
    table = backbone.token_embedding_table
    meaningful = {backbone.token_text(int(i)) for i in table.abs().sum(-1).nonzero().flatten()}
    assert len(meaningful) < len(table) // 100  # most rows are zeros
    method = build_method("coop", backbone, ["red circle", "blue square"], {"n_ctx": 3})
    words = method.nearest_words(backbone, k=5)
    assert len(words) == 3 and all(len(row) == 5 for row in words)
    assert {w for row in words for w, _ in row} <= meaningful
