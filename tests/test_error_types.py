"""One error type: bad input is a ``VlpromptError`` (exit code 2, one line); anything else is a bug (exit code 1).

The matrix of bad inputs is in ``test_errors.py``; this file checks the hierarchy itself and how the CLI
tells a user's mistake from an unexpected failure (a ``RuntimeError``, or a plain ``ValueError`` raised
inside torch, which before the hierarchy was reported as bad input).
"""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.utils.data
from test_errors import run_cli
from test_safety import TINY

import vlprompt
import vlprompt.predict
from vlprompt import errors
from vlprompt.backbones import BackboneError
from vlprompt.backbones.bundled import BundledModelError
from vlprompt.cli import describe_error, main
from vlprompt.data import DataError
from vlprompt.errors import OptionError, VlpromptError
from vlprompt.incontext import CanvasError, InpainterCheckpointError, TaskInputError
from vlprompt.io import CorruptFileError
from vlprompt.labels import LabelSpaceError
from vlprompt.methods import method_class
from vlprompt.prompts import PromptFileError
from vlprompt.rundir import RunDirError

KINDS = [errors.OptionError, errors.DataError, errors.PromptFileError, errors.BackboneError, errors.RunDirError]
#: narrower errors that live beside the code raising them, and the kind each one is
NARROW = {
    BundledModelError: errors.BackboneError,
    InpainterCheckpointError: errors.BackboneError,
    CanvasError: errors.OptionError,
    TaskInputError: errors.DataError,
    CorruptFileError: errors.DataError,
    LabelSpaceError: errors.DataError,
}


@pytest.mark.parametrize("cls", KINDS + list(NARROW), ids=lambda c: c.__name__)
def test_every_error_of_the_library_is_a_vlprompt_error_and_still_a_value_error(cls):
    assert issubclass(cls, VlpromptError) and issubclass(cls, ValueError)
    assert issubclass(cls, NARROW.get(cls, cls))


def test_the_kinds_are_importable_where_they_were_and_from_the_package():
    assert DataError is errors.DataError and BackboneError is errors.BackboneError
    assert PromptFileError is errors.PromptFileError and RunDirError is errors.RunDirError
    for name in errors.__all__:
        assert getattr(vlprompt, name) is getattr(errors, name) and name in vlprompt.__all__


def test_errors_module_imports_nothing_from_vlprompt():
    tree = ast.parse(Path(errors.__file__).read_text())
    imported = [
        node.module or "" if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert all(m == "__future__" for m in imported), imported
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))


# ------------------------------------------------------------------------------------------ describe_error


def test_describe_error_sorts_user_mistakes_from_bugs():
    assert describe_error(OptionError("--topk must be >= 1, not 0")) == (2, "--topk must be >= 1, not 0")
    assert describe_error(ValueError("expected 3 dims")) == (1, "ValueError: expected 3 dims")
    assert describe_error(RuntimeError("CUDA error: oops\nmore\ndetail")) == (1, "RuntimeError: CUDA error: oops ...")
    assert describe_error(KeyError()) == (1, "KeyError")
    missing = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/no/such/file")
    assert describe_error(missing) == (2, "No such file or directory (/no/such/file)")


def test_bad_input_to_a_method_is_an_option_error():
    """Unknown methods, bad method options and scoring what a method cannot are OptionErrors (exit 2)."""
    from vlprompt.methods import CoOpConfig
    from vlprompt.methods.base import MethodInputError, MethodOptionError

    with pytest.raises(OptionError) as unknown:
        method_class("no-such-method")
    assert describe_error(unknown.value) == (2, str(unknown.value))
    with pytest.raises(MethodOptionError) as bad:
        CoOpConfig(n_ctx=0)
    assert isinstance(bad.value, OptionError) and describe_error(bad.value) == (
        2,
        "coop option n_ctx must be >= 1, not 0",
    )
    assert issubclass(MethodInputError, OptionError)


# ------------------------------------------------------------------------------------------- through main


def _predict(image_root: Path, *extra: str) -> list[str]:
    return ["predict", str(image_root / "gold" / "0.png"), *TINY, "--classes", "a,b", *extra]


def _nonempty_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_user_mistake_is_one_line_and_exit_code_2(image_root, capsys):
    code, err = run_cli(_predict(image_root, "--topk", "0"), capsys)
    assert code == 2
    assert _nonempty_lines(err) == ["vlprompt predict: error: --topk must be >= 1, not 0"]


def test_a_parse_error_of_jsonargparse_is_still_exit_code_2(image_root, capsys):
    code, err = run_cli(_predict(image_root, "--topk", "many"), capsys)
    assert code == 2 and "--topk: expected an integer, got 'many'" in err and "--debug" not in err


def _torch_value_error(*args, **kwargs):
    """A plain ValueError raised inside torch, as a bug of ours passing torch a bad value would raise."""
    torch.utils.data.DataLoader([1, 2], batch_size=0)


@pytest.mark.parametrize("failure", ["RuntimeError", "torch ValueError"])
def test_an_unexpected_exception_is_exit_code_1_with_a_hint_and_no_traceback(failure, monkeypatch, image_root, capsys):
    def runtime_error(*args, **kwargs):
        raise RuntimeError("something inside broke")

    broken = runtime_error if failure == "RuntimeError" else _torch_value_error
    monkeypatch.setattr(vlprompt.predict.Predictor, "zero_shot", broken)
    code, err = run_cli(_predict(image_root), capsys)  # run_cli checks that no traceback is printed
    assert code == 1
    first, hint = _nonempty_lines(err)
    if failure == "RuntimeError":
        assert first == "vlprompt predict: error: RuntimeError: something inside broke"
    else:
        assert first.startswith("vlprompt predict: error: ValueError: batch_size should be a positive integer")
    assert hint == "(an unexpected error: rerun with --debug for the traceback)"


def test_debug_raises_the_unexpected_exception(monkeypatch, image_root):
    monkeypatch.setattr(vlprompt.predict.Predictor, "zero_shot", _torch_value_error)
    with pytest.raises(ValueError, match="batch_size should be a positive integer") as raised:
        main(_predict(image_root, "--debug"))
    assert not isinstance(raised.value, VlpromptError)


def test_debug_prints_the_traceback_from_the_console(image_root):
    script = (
        "import sys, vlprompt.predict\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('something inside broke')\n"
        "vlprompt.predict.Predictor.zero_shot = broken\n"
        "from vlprompt.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def console(*extra: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", script, *_predict(image_root, *extra)]
        return subprocess.run(argv, capture_output=True, text=True, env=env)

    plain = console()
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and "rerun with --debug" in plain.stderr
    debug = console("--debug")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "RuntimeError: something inside broke" in debug.stderr
    assert "in broken" in debug.stderr  # the frame that raised


def test_ctrl_c_is_still_exit_code_130(monkeypatch, image_root, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vlprompt.predict.Predictor, "zero_shot", interrupted)
    code, err = run_cli(_predict(image_root), capsys)
    assert code == 130 and "interrupted" in err
