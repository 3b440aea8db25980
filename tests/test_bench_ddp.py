"""`vlprompt bench` under torchrun with two processes (gloo on CPU) gives one process's tables; only rank 0 writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import bench_ddp_worker
import pytest
import torch
from benchmark_fixtures import write_fixture
from conftest import torchrun
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("bench_ddp_worker.py")
#: What varies between two runs of the same bench (wall-clock time), left out of the comparison.
TIMINGS = {"train_seconds"}


def commands(root: Path, out: Path) -> list[list[str]]:
    """A small few-shot bench (two datasets, two seeds) and a base-to-new one, zero-shot, CoOp and TPT (tuned on
    each test image's own views: under torchrun each rank tunes its share of the images).

    They share a feature cache folder: the first writes it (rank 0), the second reads it on every rank.
    """
    common = ["--methods", "zeroshot", "coop", "tpt", "--data.root", str(root), "--backbone.name", "tiny-random-vit"]
    common += ["--train.epochs", "2", "--method_options", "{coop: {n_ctx: 2}, tpt: {views: 8, select: 0.25}}"]
    common += ["--feature_cache_dir", str(out / "features")]
    return [
        ["bench", "few-shot", "--datasets", "dtd", "eurosat", "--data.shots", "1", "--seeds", "1", "2", *common,
         "--out", str(out / "few-shot")],
        ["bench", "base-to-new", "--datasets", "dtd", "--data.shots", "2", "--seeds", "1", *common,
         "--out", str(out / "base-to-new")],
    ]  # fmt: skip


@pytest.fixture(scope="module")
def benches(tmp_path_factory):
    """Launch the 2-process benches in the background, run them in one process here meanwhile."""
    root = tmp_path_factory.mktemp("data")
    for name in ("dtd", "eurosat"):
        write_fixture(name, root)
    ddp_out, single_out = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("single")
    log = tmp_path_factory.mktemp("writes") / "writes"
    command, env = torchrun(WORKER, str(ddp_out), str(log), json.dumps(commands(root, ddp_out)))
    start = time.time()
    proc = subprocess.Popen(  # its own process group: a hang is ended with torchrun's workers
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        bench_ddp_worker.run(commands(root, single_out))
        output, _ = proc.communicate(timeout=max(180 - (time.time() - start), 30))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun timed out (a hang, e.g. a rank waiting at a barrier the other never reaches):\n"
                    f"{output[-4000:]}")  # fmt: skip
    finally:
        if proc.poll() is None:  # the one-process run failed: do not leave the two-process one running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, f"torchrun failed:\n{output[-4000:]}"
    writes = {r: json.loads(Path(f"{log}.rank{r}.json").read_text()) for r in (0, 1)}
    return ddp_out, single_out, writes, output


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _assert_same_results(two, one, where: str) -> None:
    """Two results.json contents are equal, numbers up to 1e-9, timings left out."""
    if isinstance(one, dict):
        assert isinstance(two, dict) and two.keys() == one.keys(), where
        for key in one.keys() - TIMINGS:
            _assert_same_results(two[key], one[key], f"{where}[{key!r}]")
    elif isinstance(one, list):
        assert isinstance(two, list) and len(two) == len(one), where
        for i, (a, b) in enumerate(zip(two, one)):
            _assert_same_results(a, b, f"{where}[{i}]")
    elif isinstance(one, float):
        assert two == pytest.approx(one, abs=1e-9), where
    else:
        assert two == one, where


@pytest.mark.parametrize("protocol", ["few-shot", "base-to-new"])
def test_two_processes_give_one_process_tables(benches, protocol):
    ddp_out, single_out, _, output = benches
    ddp, single = ddp_out / protocol, single_out / protocol
    # the same tables, to the digit
    for name in ("results.md", "results.csv"):
        assert (ddp / name).read_text() == (single / name).read_text(), name
    assert (ddp / "results.md").read_text().count("| coop |") >= 1
    # the same numbers, in the bench's results.json and in every sub-run's and seed's: accuracies are counts
    # over the same test images (each rank scores half, gathered), so equal up to float rounding of the means
    assert _files(ddp) == _files(single)
    results = [f for f in _files(single) if f.endswith("results.json")]
    assert len(results) == {"few-shot": 1 + 6 + 12, "base-to-new": 1 + 3 + 3}[protocol]
    assert (ddp / "results.md").read_text().count("| tpt |") >= 1
    for name in results:
        _assert_same_results(json.loads((ddp / name).read_text()), json.loads((single / name).read_text()), name)
    # the trained prompts: the same global batches, so the same tensors (as tests/test_ddp.py asserts for fit)
    prompts = [f for f in _files(single) if f.endswith(".safetensors")]
    assert any("/coop/" in f for f in prompts)
    for name in prompts:
        one, two = load_file(str(single / name)), load_file(str(ddp / name))
        assert one.keys() == two.keys(), name
        for key, value in one.items():
            torch.testing.assert_close(two[key], value, atol=1e-6, rtol=0, msg=f"{name}: {key}")
    # rank 0 prints the table once
    assert output.count(f"## {protocol} (mean ± std over seeds, %)") == 1


def test_only_rank_zero_writes(benches):
    ddp_out, _, writes, _ = benches
    assert writes[1] == [], f"rank 1 changed files: {writes[1][:10]}"
    written = {Path(path).relative_to(ddp_out).as_posix() for _, path in writes[0]}
    assert {"few-shot/results.json", "base-to-new/results.json"} <= written  # the watch sees rank 0's writes
    assert any(path.startswith("features/") for path in written)
