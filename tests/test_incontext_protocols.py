"""In-context protocols: example choice, scoring, the bundled tiny inpainter, the demo and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlprompt.cli import main
from vlprompt.incontext import CanvasLayout, Inpainter, choose_examples, evaluate_pairs, load_inpainter
from vlprompt.incontext.evaluate import heldout_metrics, heldout_set
from vlprompt.incontext.models import BUNDLED_INPAINTER, read_manifest
from vlprompt.incontext.models.loading import _BUNDLED


class CopyExampleOutput(Inpainter):
    """Answers with the example output: the top-right cell copied into the answer cell."""

    def __init__(self, layout: CanvasLayout) -> None:
        super().__init__()
        self.layout = layout
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def predict(self, canvases, mask):
        return canvases

    def render(self, prediction):
        from vlprompt.incontext.canvas import denormalize

        pixels = denormalize(prediction).clone()
        far, cell = self.layout.origin(1, 1)[0], self.layout.cell
        pixels[:, :, far:, far:] = pixels[:, :, :cell, far:]
        return pixels


def _squares(n: int, side: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """n grey images with a white square of side 2 + i, and their masks."""
    images, masks = torch.full((n, 3, side, side), 0.3), torch.zeros(n, 3, side, side)
    for i in range(n):
        images[i, :, 1 : 3 + i, 1 : 3 + i] = 1.0
        masks[i, :, 1 : 3 + i, 1 : 3 + i] = 1.0
    return images, masks


def test_random_choice_is_seeded_and_nearest_is_the_argmax():
    a, b = choose_examples(20, 10, "random", seed=1), choose_examples(20, 10, "random", seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, choose_examples(20, 10, "random", seed=2))
    assert choose_examples(5, 10, "random", seed=1, k=3).shape == (5, 3)
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pool = torch.tensor([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    assert choose_examples(2, 3, "nearest", query_features=queries, pool_features=pool).tolist() == [[2], [0]]
    with pytest.raises(ValueError, match="unknown example selection"):
        choose_examples(2, 3, "closest")


def test_protocol_scores_by_hand():
    layout = CanvasLayout(size=24, patch_size=4, padding=1)  # cells of 11 px
    model = CopyExampleOutput(layout)
    images, masks = _squares(4)
    identity = torch.eye(4)
    same = evaluate_pairs(model, "segmentation", (images, masks), (images, masks), "nearest", 0, (identity, identity))
    assert same["examples"].tolist() == [0, 1, 2, 3] and same["score"] == pytest.approx(1.0)
    blank = evaluate_pairs(model, "segmentation", (images, masks), (images, masks), "blank")
    # A white answer cell: IoU = the target's foreground fraction of the 11x11 cell.
    from vlprompt.incontext import get_task
    from vlprompt.incontext.canvas import resize_cells

    targets = get_task("segmentation").read(resize_cells(masks, 11))
    assert blank["score"] == pytest.approx(np.mean([t.float().mean().item() for t in targets]))
    shifted = evaluate_pairs(model, "segmentation", (images, masks), (images.roll(1, 0), masks.roll(1, 0)), "nearest",
                             0, (identity, identity))  # fmt: skip
    assert 0 < shifted["score"] < 1  # the neighbour's square overlaps the query's, but is a different size


def test_threshold_baseline_finds_a_square_of_either_polarity():
    from vlprompt.incontext.evaluate import threshold_masks

    bright = torch.full((3, 6, 6), 0.2)
    bright[:, 1:3, 2:5] = 0.9
    dark = 1.1 - bright  # a dark square on a bright background
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1:3, 2:5] = True
    for image in (bright, dark):
        assert torch.equal(threshold_masks(image[None])[0], expected)


@pytest.fixture(scope="module")
def bundled():
    return load_inpainter(BUNDLED_INPAINTER)


def test_bundled_inpainter_reproduces_its_card_metrics(bundled):
    manifest = read_manifest(_BUNDLED[BUNDLED_INPAINTER])
    assert (_BUNDLED[BUNDLED_INPAINTER] / "weights.safetensors").stat().st_size < 5e6
    measured = heldout_metrics(bundled)
    assert measured == pytest.approx(manifest["metrics"], abs=0.01)  # within 1 point (other CPUs round differently)


def test_bundled_inpainter_learns_segmentation_in_context(bundled):
    queries, pool = heldout_set("segmentation", 48, 1001), heldout_set("segmentation", 48, 1002)
    random = [evaluate_pairs(bundled, "segmentation", queries, pool, "random", s)["score"] for s in (1, 2, 3)]
    blank = evaluate_pairs(bundled, "segmentation", queries, pool, "blank")["score"]
    assert min(random) > blank + 0.15, (random, blank)


def _write_scene(tmp_path, name: str, seed: int, shape: str = "star") -> tuple[str, str]:
    from vlprompt.data.synthetic import render_scene

    image, mask = render_scene("blue", shape, "web", np.random.default_rng(seed))
    Image.fromarray(image).save(tmp_path / f"{name}.png")
    Image.fromarray(((mask > 0.5) * 255).astype(np.uint8)).save(tmp_path / f"{name}_mask.png")
    return str(tmp_path / f"{name}.png"), str(tmp_path / f"{name}_mask.png")


def test_cli_fills_canvases_and_prints_numbers(tmp_path, capsys):
    ex, ex_mask = _write_scene(tmp_path, "ex", 1)
    q, q_mask = _write_scene(tmp_path, "q", 2)
    out = tmp_path / "out"
    args = ["incontext", "--examples", f"[{ex}]", "--outputs", f"[{ex_mask}]", "--queries", f"[{q}]"]
    code = main([*args, "--targets", f"[{q_mask}]", "--out", str(out), "--json"])
    assert code == 0
    [record] = json.loads(capsys.readouterr().out)
    assert (out / "canvas_0.png").is_file() and Image.open(out / "answer_0.png").size == (48, 48)
    assert 0 < record["foreground_fraction"] < 1 and record["mIoU"] > 0.3
    detection = ["incontext", "--task", "detection", "--examples", f"[{ex},{ex}]", "--outputs",
                 f"[{ex_mask},{ex_mask}]", "--queries", f"[{q}]", "--out", str(out), "--json"]  # fmt: skip
    assert main(detection) == 2  # the earlier run is not replaced without --overwrite
    assert "holds an earlier run: pass --overwrite" in capsys.readouterr().err
    assert (out / "canvas_0.png").is_file()
    assert main([*args, "--queries", f"[{q},{ex}]", "--out", str(out)]) == 2
    capsys.readouterr()
    two = tmp_path / "two"
    assert main([*args, "--queries", f"[{q},{ex}]", "--out", str(two)]) == 0 and (two / "answer_1.png").is_file()
    capsys.readouterr()
    assert main([*detection[:-3], "--out", str(two), "--overwrite", "true", "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert len(record["box"]) == 4 and (two / "answer_0.png").is_file()
    assert not (two / "answer_1.png").exists()  # the earlier run's second answer is gone, not left beside
    styled = [*args, "--out", str(tmp_path / "pil"), "--canvas.resize", "pil", "--canvas.background", "[0,0,0]"]
    assert main(styled) == 0
    canvas = np.asarray(Image.open(tmp_path / "pil" / "canvas_0.png"))  # 48 px: cells of 23 px, a black cross
    assert canvas.shape == (48, 48, 3) and (canvas[23:25, :24] == 0).all() and (canvas[:24, 23:25] == 0).all()
    assert canvas[:23, :23].max() > 0


def test_cli_bad_inputs_are_one_clear_line(tmp_path, capsys):
    ex, ex_mask = _write_scene(tmp_path, "ex", 1)
    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(tmp_path / "grey.png")
    base = ["incontext", "--examples", f"[{ex}]", "--queries", f"[{ex}]", "--out", str(tmp_path / "o")]
    assert main([*base, "--outputs", f"[{tmp_path / 'grey.png'}]"]) == 2
    assert "example 1 output is not a binary mask" in capsys.readouterr().err
    assert main([*base, "--outputs", f"[{ex_mask},{ex_mask}]"]) == 2
    assert "1 example input(s) but 2 example output(s)" in capsys.readouterr().err
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "small.png")
    assert main([*base, "--outputs", f"[{tmp_path / 'small.png'}]"]) == 2
    assert "the input is 48x48 pixels but its output is 30x20" in capsys.readouterr().err
    assert main([*base, "--outputs", f"[{ex_mask}]", "--model", str(tmp_path / "none.pth")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_demo_table_and_picture(tmp_path):
    from vlprompt.incontext import run_incontext_demo

    report = run_incontext_demo(tmp_path, seeds=[1], progress=False, queries=8)
    assert (tmp_path / "incontext_canvases.png").is_file() and (tmp_path / "incontext.json").is_file()
    rows = report["results"]["summary"]
    assert {(r["task"], r["examples"]) for r in rows} == {
        (t, s) for t in ("segmentation", "detection", "colourisation") for s in ("random", "nearest", "blank")
    } | {("segmentation", "none (query thresholded)")}
    assert "| segmentation | mIoU | nearest |" in report["table"]
    assert "| segmentation | mIoU | none (query thresholded) |" in report["table"]


def test_vlprompt_demo_runs_the_incontext_table(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seeds", "[1]", "--methods", "[incontext]"]) == 0
    assert "In-context visual prompting" in (out / "results.md").read_text()
    assert (out / "incontext" / "incontext_canvases.png").is_file()
    assert "incontext" in json.loads((out / "results.json").read_text())
