"""Zero-shot CLIP ViT-B/16 against the papers' base-to-new numbers, dataset by dataset.

The marked test needs OpenAI's ViT-B/16 weights and the datasets; it is skipped unless asked for
(``--weights`` or ``VLPROMPT_WEIGHTS=1``, see docs/benchmarks.md, "Reproducing the papers on a GPU"):

    VLPROMPT_WEIGHTS=1 VLPROMPT_DATA_ROOT=$DATA python -m pytest tests/test_paper_zeroshot.py

``VLPROMPT_DATA_ROOT`` is the datasets root of ``vlprompt data`` (one folder per dataset, docs/datasets.md);
a dataset whose folder is not there is skipped. The weights are open_clip's ``ViT-B-16`` ``openai`` tag
from the Hugging Face cache (the tests run with ``HF_HUB_OFFLINE=1``: download them once beforehand), or
the local open_clip checkpoint file named by ``VLPROMPT_B16_PRETRAINED``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlprompt.backbones import BackboneError
from vlprompt.data.benchmarks import DATASETS, FEW_SHOT_DATASETS
from vlprompt.data.papers import paper_result
from vlprompt.runs import BackboneConfig
from vlprompt.runs.bench import BenchData, BenchRun, run_bench

#: How far (in points) our zero-shot base and new accuracies may be from the published ones.
TOLERANCE = 1.0


def test_every_registry_dataset_has_a_zero_shot_paper_number():
    """The marked test below always has a published number to compare with."""
    for dataset in FEW_SHOT_DATASETS:
        entry = paper_result("zeroshot", "base-to-new", dataset)
        assert entry is not None, f"papers.json has no zero-shot CLIP ViT-B/16 base-to-new entry for {dataset}"
        assert entry.shots == 0 and entry.preset is None and set(entry.metrics) == {"base", "new", "hm"}


@pytest.fixture(scope="module")
def data_root() -> Path:
    root = os.environ.get("VLPROMPT_DATA_ROOT")
    if not root:
        pytest.skip("set VLPROMPT_DATA_ROOT to the datasets root (`vlprompt data`'s layout, docs/datasets.md)")
    if not Path(root).is_dir():
        pytest.skip(f"VLPROMPT_DATA_ROOT={root} is not a directory")
    return Path(root)


@pytest.fixture(scope="module")
def b16():
    """OpenAI's ViT-B/16, loaded once; the library's message when its weights are not here becomes the skip."""
    config = BackboneConfig(name="ViT-B-16", pretrained=os.environ.get("VLPROMPT_B16_PRETRAINED", "openai"))
    try:
        return config, config.load()
    except BackboneError as err:
        pytest.skip(f"no ViT-B/16 weights ({err}); or set VLPROMPT_B16_PRETRAINED to a local ViT-B-16 checkpoint")


@pytest.mark.weights
@pytest.mark.parametrize("dataset", FEW_SHOT_DATASETS)
def test_zero_shot_clip_matches_the_paper(dataset, data_root, request, tmp_path):
    folder = DATASETS[dataset].directory(data_root)
    if not folder.is_dir():
        pytest.skip(f"{dataset} is not under VLPROMPT_DATA_ROOT: no folder {folder}")
    config, backbone = request.getfixturevalue("b16")  # the weights only once a dataset is there
    # As `vlprompt bench base-to-new --datasets <dataset> --methods zeroshot`: CoOp's template of the dataset.
    bench = BenchRun(
        datasets=[dataset],
        methods=["zeroshot"],
        seeds=[1],
        data=BenchData(root=str(data_root)),
        backbone=config,
        out=str(tmp_path / "bench"),
    )
    report = run_bench("base-to-new", bench, backbone, progress=False)
    [cell] = [c for c in report["summary"] if c["dataset"] == dataset and c["method"] == "zeroshot"]
    paper = paper_result("zeroshot", "base-to-new", dataset).metrics
    ours = {m: 100 * cell[m] for m in ("base", "new")}
    off = {m: round(ours[m] - paper[m], 2) for m in ours if abs(ours[m] - paper[m]) > TOLERANCE}
    assert not off, f"{dataset}: ours {ours} vs the paper's {paper}; more than {TOLERANCE} points off: {off}"
