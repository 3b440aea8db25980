"""Every file reader sees random JSON shapes and fails only with the library's error type (issue 17).

Each reader gets a file holding an arbitrary JSON value, or a valid file with one field replaced by
one; it must either accept it or raise a :class:`~vlprompt.errors.VlpromptError` (never a
KeyError, TypeError, AttributeError, ...). Deterministic (derandomised) and small.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlprompt.backbones import tiny_random_backbone
from vlprompt.bank import read_bank
from vlprompt.data.images import split_json
from vlprompt.data.sampling import _read_index_file
from vlprompt.errors import OptionError, VlpromptError
from vlprompt.incontext.models.loading import read_manifest
from vlprompt.labels import LabelSpaceError, label_space_from_json
from vlprompt.methods import build_method
from vlprompt.prompts import read_prompt_config, save_pretrained
from vlprompt.schema import safe_yaml_load

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory) -> Path:
    backbone = tiny_random_backbone("vit")
    method = build_method("coop", backbone, ["red", "gold"], {"n_ctx": 2})
    return save_pretrained(method, backbone, tmp_path_factory.mktemp("p") / "coop")


def _accepts_or_refuses(read, *args) -> None:
    """``read(*args)`` returns or raises a VlpromptError; anything else fails the test."""
    with contextlib.suppress(VlpromptError):
        read(*args)


def _with_field(path: Path, original: dict, key: str, value) -> None:
    path.write_text(json.dumps({**original, key: value}))


@SETTINGS
@given(value=JSON)
def test_prompt_json_of_any_shape(value, tmp_path_factory, prompt_dir):
    folder = Path(shutil.copytree(prompt_dir, tmp_path_factory.mktemp("c") / "p"))
    (folder / "prompt.json").write_text(json.dumps(value))
    _accepts_or_refuses(read_prompt_config, folder)


@SETTINGS
@given(key=st.sampled_from(["method", "config", "backbone", "labels", "extra", "format_version", "tensors_sha256"]),
       value=JSON)  # fmt: skip
def test_prompt_json_with_any_field(key, value, tmp_path_factory, prompt_dir):
    folder = Path(shutil.copytree(prompt_dir, tmp_path_factory.mktemp("c") / "p"))
    original = json.loads((prompt_dir / "prompt.json").read_text())
    _with_field(folder / "prompt.json", original, key, value)
    _accepts_or_refuses(read_prompt_config, folder)


@SETTINGS
@given(value=JSON)
def test_label_spaces_of_any_shape(value):
    _accepts_or_refuses(label_space_from_json, value)
    for kind in ("classes", "pairs", "tasks"):
        for key in ("names", "attrs", "objs", "pairs", "tasks"):
            _accepts_or_refuses(label_space_from_json, {"kind": kind, key: value})
    with pytest.raises(LabelSpaceError):
        label_space_from_json({"kind": "classes", "names": value if not isinstance(value, list) else 7})


@SETTINGS
@given(prompts=JSON, backbone=JSON)
def test_bank_json_of_any_shape(prompts, backbone, tmp_path_factory, prompt_dir):
    bank = tmp_path_factory.mktemp("bank")
    shutil.copytree(prompt_dir, bank / "00-a")
    config = {"format": "vlprompt-prompt-bank", "format_version": 1, "backbone": backbone, "prompts": prompts}
    (bank / "bank.json").write_text(json.dumps(config))
    _accepts_or_refuses(read_bank, bank)
    (bank / "bank.json").write_text(json.dumps(prompts))
    _accepts_or_refuses(read_bank, bank)


@SETTINGS
@given(value=JSON, entry=JSON)
def test_split_files_of_any_shape(value, entry, tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    path = folder / "split.json"
    path.write_text(json.dumps(value))
    _accepts_or_refuses(split_json, path, folder, "test")
    path.write_text(json.dumps({"train": [entry], "val": [], "test": [entry]}))
    _accepts_or_refuses(split_json, path, folder, "test")
    path.write_text(json.dumps({"train": [["a.png", 0, entry]], "val": [], "test": [[entry, 0, "a"]]}))
    _accepts_or_refuses(split_json, path, folder, "test")


@SETTINGS
@given(value=JSON)
def test_index_and_manifest_files_of_any_shape(value, tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    (folder / "index.json").write_text(json.dumps(value))
    _accepts_or_refuses(_read_index_file, folder / "index.json")
    (folder / "manifest.json").write_text(json.dumps(value))
    _accepts_or_refuses(read_manifest, folder)
    manifest = {"format": "vlprompt-inpainter", "kind": "pixel-mae", "config": value, "weights": value}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _accepts_or_refuses(read_manifest, folder)


def test_a_yaml_alias_bomb_and_a_recursive_alias_fail_in_under_a_second():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    for text in (bomb, "a: &a [*a]\n", "a: !!python/object/apply:os.getcwd []\n"):
        start = time.perf_counter()
        with pytest.raises(OptionError, match="config.yaml"):
            safe_yaml_load(text, "config.yaml")
        assert time.perf_counter() - start < 1.0
    assert safe_yaml_load("a: &a [1, 2]\nb: *a\n") == {"a": [1, 2], "b": [1, 2]}  # ordinary aliases still work


def test_incontext_decodes_16_bit_grey_as_classification_does(tmp_path):
    from vlprompt.data.images import load_rgb
    from vlprompt.incontext.predict import _open

    grey = np.full((8, 8), 30000, dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "q.png")
    decoded = _open(tmp_path / "q.png", "query 1")
    assert decoded.mode == "RGB" and decoded.getpixel((0, 0)) == (117, 117, 117)  # 30000 * 255 / 65535, not white
    assert (np.asarray(decoded) == np.asarray(load_rgb(tmp_path / "q.png"))).all()
