"""Training logs (``--train.loggers``): read back with each library's own reader, equal to metrics.jsonl."""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
from pathlib import Path

import pytest
import torch

from vlprompt.cli import main
from vlprompt.data import image_folder
from vlprompt.engine import FeatureCache, TrainConfig, fit
from vlprompt.engine.loggers import TENSORBOARD_DIR, WANDB_ID_FILE, result_metrics
from vlprompt.errors import OptionError
from vlprompt.methods import CoOp, CoOpConfig

FAST = {"batch_size": 8, "lr": 0.02, "schedule": "cosine", "warmup_epochs": 1}  # 24 images: 3 steps per epoch


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def data(image_root, vit_backbone):
    return image_folder(image_root, vit_backbone.image_transform())


@pytest.fixture(autouse=True)
def wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def _train(backbone, data, run_dir, loggers, on_epoch_end=None, resume=False, **train):
    torch.manual_seed(0)
    method = CoOp(backbone, data.classnames, CoOpConfig(n_ctx=4))
    config = TrainConfig(**{"epochs": 3, **FAST, **train}, loggers=loggers, eval_every=1)
    scorer = lambda m, b: float(m.ctx.detach().double().norm())  # noqa: E731  (a number that changes every epoch)
    fit(method, backbone, data, config, scorer=scorer, run_dir=run_dir, resume=resume, cache=FeatureCache(),
        progress=False, on_epoch_end=on_epoch_end)  # fmt: skip
    return config


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tensorboard(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


def _tb_series(acc, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def _wandb_records(path: Path) -> list:
    """The records of a W&B offline run file (``run-<id>.wandb``), decoded with wandb's protobuf schema.

    The file is W&B's LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each a 7-byte header
    (crc32, length, type: full / first / middle / last) and its bytes; a record is the chunks up to a full or last.
    """
    from wandb.proto import wandb_internal_pb2

    blob = path.read_bytes()
    assert blob[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(blob):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", blob[pos : pos + 7])
        pending += blob[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_run(run_file: Path) -> tuple[str, dict[int, dict], dict, dict]:
    """(run id, history by step, config, summary) of one offline run file."""
    run_id, history, config, summary = "", {}, {}, {}
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            config |= {u.key: json.loads(u.value_json) for u in record.run.config.update}
        elif kind == "config":
            config |= {u.key: json.loads(u.value_json) for u in record.config.update}
        elif kind == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            history[int(row["_step"])] = history.get(int(row["_step"]), {}) | row
        elif kind == "summary":
            summary |= {"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in record.summary.update}
    return run_id, history, config, summary


def test_every_logger_records_the_numbers_of_metrics_jsonl(tmp_path, vit_backbone, data):
    config = _train(vit_backbone, data, tmp_path, ["jsonl", "csv", "tensorboard", "wandb"])
    epochs, steps = _jsonl(tmp_path / "metrics.jsonl"), _jsonl(tmp_path / "steps.jsonl")
    assert [r["epoch"] for r in epochs] == [1, 2, 3] and [r["step"] for r in epochs] == [3, 6, 9]
    assert [r["step"] for r in steps] == list(range(1, 10))
    assert [r["epoch"] for r in steps] == [1] * 3 + [2] * 3 + [3] * 3
    for epoch in epochs:  # equal-sized steps: the epoch's loss and accuracy are its steps' means
        own = [s for s in steps if s["epoch"] == epoch["epoch"]]
        assert epoch["loss"] == pytest.approx(sum(s["loss"] for s in own) / 3, rel=1e-12)
        assert epoch["train_acc"] == pytest.approx(sum(s["train_acc"] for s in own) / 3, rel=1e-12)
        assert epoch["lr"] == own[-1]["lr"] and "val_score" in epoch
    assert len({s["lr"] for s in steps}) > 3  # a per-step schedule: the lr moves every step

    for name, records in (("metrics.csv", epochs), ("steps.csv", steps)):
        with open(tmp_path / name, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [{k: float(r[k]) for k in rec} for r, rec in zip(rows, records, strict=True)] == records

    acc = _tensorboard(tmp_path / TENSORBOARD_DIR)
    for key in ("loss", "lr", "train_acc"):
        assert _tb_series(acc, f"step/{key}") == pytest.approx({s["step"]: s[key] for s in steps}, rel=1e-6)
    for key in ("loss", "lr", "train_acc", "val_score", "seconds"):
        assert _tb_series(acc, f"epoch/{key}") == pytest.approx({e["step"]: e[key] for e in epochs}, rel=1e-6)
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    plugin_data = [HParamsPluginData.FromString(c) for c in acc.PluginTagToContent("hparams").values()]
    (start,) = [d.session_start_info for d in plugin_data if d.HasField("session_start_info")]
    assert start.hparams["lr"].number_value == config.lr and start.hparams["loggers"].string_value == json.dumps(
        config.loggers
    )

    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    run_id, history, wandb_config, _ = _wandb_run(run_file)
    assert run_id == (tmp_path / WANDB_ID_FILE).read_text().strip() and run_file.name == f"run-{run_id}.wandb"
    for s in steps:
        assert {k: history[s["step"]][f"step/{k}"] for k in ("epoch", "lr", "loss", "train_acc")} == {
            k: s[k] for k in ("epoch", "lr", "loss", "train_acc")
        }
    for e in epochs:
        assert {k: history[e["step"]][f"epoch/{k}"] for k in e if k != "step"} == {k: e[k] for k in e if k != "step"}
    assert wandb_config["lr"] == config.lr and wandb_config["epochs"] == 3


def test_a_resumed_run_continues_the_same_logs(tmp_path, vit_backbone, data):
    loggers = ["jsonl", "tensorboard", "wandb"]
    _train(vit_backbone, data, tmp_path / "straight", ["jsonl"], epochs=4)

    def crash(record):
        if record["epoch"] == 3:
            raise Interrupt

    run = tmp_path / "resumed"
    with pytest.raises(Interrupt):  # checkpoint at epoch 2 (step 6); epoch 3 is logged, then lost
        _train(vit_backbone, data, run, loggers, on_epoch_end=crash, epochs=4, checkpoint_every=2)
    assert [r["step"] for r in _jsonl(run / "steps.jsonl")] == list(range(1, 10))
    first_id = (run / WANDB_ID_FILE).read_text()
    _train(vit_backbone, data, run, loggers, resume=True, epochs=4, checkpoint_every=2)

    straight = _jsonl(tmp_path / "straight" / "steps.jsonl")
    resumed = _jsonl(run / "steps.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 13))  # the crash's steps 7-9 once, not twice
    for key in ("loss", "lr", "train_acc"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in straight], abs=1e-6)
    assert [r["epoch"] for r in _jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4]

    assert len(list((run / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2  # one folder, two sessions
    acc = _tensorboard(run / TENSORBOARD_DIR)
    assert _tb_series(acc, "step/loss") == pytest.approx({r["step"]: r["loss"] for r in straight}, abs=1e-6)
    assert sorted(_tb_series(acc, "epoch/loss")) == [3, 6, 9, 12]  # the purged copy of epoch 3 is gone

    runs = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2 and (run / WANDB_ID_FILE).read_text() == first_id
    (id1, first, _, _), (id2, second, _, _) = (_wandb_run(r) for r in runs)
    assert id1 == id2 == first_id.strip()  # the same W&B run, resumed
    assert sorted(first) == list(range(1, 10)) and sorted(second) == list(range(7, 13))
    assert [second[s]["step/loss"] for s in range(7, 13)] == pytest.approx([r["loss"] for r in straight[6:]], abs=1e-6)


def test_a_run_logs_its_hyperparameters_and_results(tmp_path, image_root, split_file):
    out = tmp_path / "run"
    args = ["train", "--backbone.name", "tiny-random-vit", "--data.root", str(image_root), "--data.split_file",
            str(split_file), "--data.shots", "4", "--train.epochs", "2", "--train.batch_size", "8",
            "--seeds", "[1]", "--out", str(out), "--train.loggers", "[tensorboard, wandb]"]  # fmt: skip
    assert main(args) == 0
    row = json.loads((out / "seed1" / "results.json").read_text())  # classification: one row
    assert not (out / "seed1" / "metrics.jsonl").exists()  # jsonl was not asked for
    acc = _tensorboard(out / "seed1" / TENSORBOARD_DIR)
    steps = sorted(_tb_series(acc, "step/loss"))
    assert _tb_series(acc, "results/accuracy") == pytest.approx({steps[-1]: row["accuracy"]}, rel=1e-6)
    (table,) = acc.Tensors("results/text_summary")
    text = table.tensor_proto.string_val[0].decode()
    assert "| coop | 1 |" in text and str(row["accuracy"]) in text
    (run_file,) = (out / "seed1" / "wandb").glob("offline-run-*/run-*.wandb")
    _, history, config, summary = _wandb_run(run_file)
    assert (
        summary["results/accuracy"] == row["accuracy"]
        and summary["results/mean_per_class_accuracy"] == (row["mean_per_class_accuracy"])
    )
    assert config["method"] == "coop" and config["train"]["epochs"] == 2 and config["train"]["seed"] == 1
    assert sorted(history) == steps and len(steps) >= 2  # every step, in the same W&B run


def test_result_metrics_name_each_rows_labels():
    rows = [{"method": "csp", "seed": 1, "world": "closed", "AUC": 0.5}, {"method": "csp", "world": "open", "AUC": 0.2}]
    assert result_metrics(rows) == {"results/closed/AUC": 0.5, "results/open/AUC": 0.2}


def test_missing_package_or_unknown_logger_fails_before_any_work(monkeypatch, tmp_path, image_root, split_file, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    missing = r"^--train.loggers wandb needs the wandb package: pip install 'vlprompt\[wandb\]'$"
    with pytest.raises(OptionError, match=missing):
        TrainConfig(loggers=["jsonl", "wandb"])
    with pytest.raises(OptionError, match=r"unknown logger 'mlflow' \(choose from jsonl, csv, tensorboard, wandb\)"):
        TrainConfig(loggers=["mlflow"])
    with pytest.raises(OptionError, match="lists 'csv' twice"):
        TrainConfig(loggers=["csv", "csv"])
    out = tmp_path / "run"
    args = ["train", "--backbone.name", "tiny-random-vit", "--data.root", str(image_root), "--data.split_file",
            str(split_file), "--out", str(out), "--train.loggers", "[wandb]"]  # fmt: skip
    assert main(args) == 2
    assert "pip install 'vlprompt[wandb]'" in capsys.readouterr().err and not out.exists()
