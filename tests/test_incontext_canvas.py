"""In-context canvases and tasks against hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlprompt.incontext import CanvasError, CanvasLayout, TaskInputError, answer_cell, build_canvases, get_task
from vlprompt.incontext.canvas import CanvasStyle, denormalize, normalize
from vlprompt.incontext.tasks import Box, box_iou, check_examples, largest_component_box, mask_iou, round_black_white
from vlprompt.incontext.world import task_batch


def _solid(rgb, side=3):
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, side, side).clone()


def test_reference_layout_geometry():
    layout = CanvasLayout()  # 224 px, 16-px patches, 1-px padding
    assert layout.cell == 111 and layout.grid == 14
    assert [layout.origin(r, c) for r in (0, 1) for c in (0, 1)] == [(0, 0), (0, 113), (113, 0), (113, 113)]
    mask = layout.answer_mask().view(14, 14)
    assert mask.sum() == 49 and mask[7:, 7:].all() and not mask[:7].any() and not mask[:, :7].any()


def test_canvas_built_by_hand():
    layout = CanvasLayout(size=8, patch_size=2, padding=1)  # cells of 3 px at 0 and 5
    red, green, blue = _solid((1.0, 0, 0)), _solid((0, 1.0, 0)), _solid((0, 0, 1.0))
    canvas = build_canvases([red], [green], [blue], layout)[0]
    expected = torch.ones(3, 8, 8)
    expected[:, 0:3, 0:3] = red
    expected[:, 0:3, 5:8] = green
    expected[:, 5:8, 0:3] = blue
    assert torch.equal(canvas, expected)  # white cross (rows/columns 3-4) and a white answer cell
    assert torch.equal(answer_cell(canvas[None], layout)[0], torch.ones(3, 3, 3))
    filled = canvas.clone()
    filled[:, 5:8, 5:8] = 0.25
    assert torch.equal(answer_cell(filled[None], layout), torch.full((1, 3, 3, 3), 0.25))


def test_cells_are_resized_and_normalisation_round_trips():
    layout = CanvasLayout(size=8, patch_size=2)
    big = _solid((0.5, 0.2, 0.9), side=12)
    canvas = build_canvases([big], [big], [big], layout)[0]
    assert torch.allclose(canvas[:, :3, :3], _solid((0.5, 0.2, 0.9)), atol=1e-6)
    norm = normalize(canvas)
    assert norm[0, 7, 7].item() == pytest.approx((1 - 0.485) / 0.229)
    assert torch.allclose(denormalize(norm), canvas, atol=1e-6)


def test_pil_style_builds_the_reference_canvas():
    """The reference's canvas (amirbar/visual_prompting@6923923:evaluate/pascal_dataloader.py and
    evaluate_segmentation.py): 8-bit PIL images through torchvision's Resize((111, 111), 3) and ToTensor, pasted
    on torch.ones; vlprompt's "pil" style gets it bit for bit from float images of those 8-bit values."""
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((150, 200), (90, 90), (240, 130))]
    reference = transforms.Compose([transforms.Resize((111, 111), 3), transforms.ToTensor()])
    cells = [reference(Image.fromarray(a)) for a in arrays]
    expected = torch.ones(3, 224, 224)
    expected[:, :111, :111], expected[:, :111, -111:], expected[:, -111:, :111] = cells
    floats = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays]
    layout = CanvasLayout(style=CanvasStyle(resize="pil"))
    canvas = build_canvases(floats[:1], floats[1:2], floats[2:], layout)[0]
    assert torch.equal(canvas, expected)
    torch_canvas = build_canvases(floats[:1], floats[1:2], floats[2:], CanvasLayout())[0]
    assert 0 < (torch_canvas - expected).abs().max() < 0.1  # the default differs slightly: float resize, no rounding


def test_canvas_background_and_filter_are_options():
    grey = (0.5, 0.25, 0.0)
    layout = CanvasLayout(size=8, patch_size=2, padding=1, style=CanvasStyle(background=grey, resample="nearest"))
    red = _solid((1, 0, 0), side=6)
    canvas = build_canvases([red], [red], [red], layout)[0]
    assert torch.equal(canvas[:, 3:5, :], _solid(grey, side=8)[:, 3:5, :])  # the cross
    assert torch.equal(answer_cell(canvas[None], layout)[0], _solid(grey))  # the answer cell
    assert torch.equal(canvas[:, :3, :3], _solid((1, 0, 0)))
    with pytest.raises(CanvasError, match="resample 'lanczos' with resize 'torch'"):
        CanvasStyle(resample="lanczos")
    with pytest.raises(CanvasError, match="resize must be 'torch' or 'pil'"):
        CanvasStyle(resize="cv2")  # type: ignore[arg-type]
    with pytest.raises(CanvasError, match=r"background must be 3 values in \[0, 1\]"):
        CanvasStyle(background=(255, 255, 255))


def test_canvas_size_must_fit_the_patch_grid():
    with pytest.raises(CanvasError, match="100 is not divisible by the patch size 16"):
        CanvasLayout(size=100, patch_size=16)
    with pytest.raises(CanvasError, match="odd patch grid"):
        CanvasLayout(size=48, patch_size=16)
    with pytest.raises(CanvasError, match="as many example inputs"):
        build_canvases([_solid((1, 1, 1))] * 2, [_solid((1, 1, 1))], [_solid((1, 1, 1))] * 2, CanvasLayout(8, 2))


def test_segmentation_rounding_and_iou():
    cell = torch.tensor([[0.6, 0.6, 0.3], [0.4, 0.5, 0.5], [1.0, 1.0, 1.0], [0.0, 0.1, 0.0]]).T.reshape(3, 2, 2)
    assert round_black_white(cell).tolist() == [[True, False], [True, False]]  # channel mean >= 0.5 is white
    pred = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    target = torch.tensor([[0, 1, 1, 1, 1]], dtype=torch.bool)
    assert mask_iou(pred, target) == pytest.approx(2 / 5)
    assert mask_iou(torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)) == 1.0
    task = get_task("segmentation")
    mask = np.array([[0, 255], [255, 255]], np.uint8)
    assert torch.equal(task.output_cell(mask, (2, 2))[1], torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    assert task.score(task.read(task.output_cell(mask, (2, 2))[None])[0], torch.from_numpy(mask > 0)) == 1.0


def test_detection_draws_and_reads_boxes():
    task = get_task("detection")
    drawn = task.output_cell(Box(1, 0, 3, 2), (4, 4))
    assert drawn[0].tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[0:2, 0:2] = True  # 4 pixels
    mask[4, 3:5] = True  # 2 pixels
    assert largest_component_box(mask) == Box(0, 0, 2, 2)
    assert largest_component_box(torch.zeros(3, 3, dtype=torch.bool)) is None
    assert box_iou(Box(0, 0, 2, 2), Box(1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou(None, Box(0, 0, 1, 1)) == 0.0
    assert task.as_box(np.array([[0, 0, 0], [0, 1, 1], [0, 0, 0]])) == Box(1, 1, 3, 2)
    assert task.answer_at(Box(0, 0, 2, 2), side=2, size=(10, 20)) == Box(0, 0, 20, 10)


def test_colourisation_draws_the_luma():
    task = get_task("colourisation")
    grey = task.input_cell(_solid((1.0, 0.0, 0.0), side=1))
    assert torch.allclose(grey.flatten(), torch.full((3,), 0.299))
    assert task.score(torch.zeros(3, 2, 2), torch.full((3, 2, 2), 0.5)) == pytest.approx(0.25)
    assert not task.higher_is_better


def test_bad_examples_are_clear_errors():
    seg = get_task("segmentation")
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(TaskInputError, match=r"example 1 output is not a binary mask: it holds the values 0, 128, 255"):
        check_examples(seg, [image], [np.array([[0, 128], [255, 0]], np.uint8)])
    with pytest.raises(TaskInputError, match="input is 4x4 pixels but its output is 2x2"):
        check_examples(seg, [image], [np.zeros((2, 2), np.uint8)])
    with pytest.raises(TaskInputError, match=r"2 example input\(s\) but 1 example output\(s\)"):
        check_examples(seg, [image, image], [np.zeros((4, 4), np.uint8)])
    with pytest.raises(TaskInputError, match="colour channels differ"):
        check_examples(seg, [image], [np.dstack([np.zeros((4, 4)), np.ones((4, 4)), np.zeros((4, 4))])])
    with pytest.raises(TaskInputError, match="unknown task"):
        get_task("depth")


def test_world_batches_draw_what_the_tasks_draw():
    masks = torch.zeros(2, 6, 6)
    masks[0, 1:3, 2:5] = 0.9
    masks[1, 4, 0] = 0.7
    masks[1, 0, 5] = 0.3  # below one half: not foreground
    images = torch.rand(2, 3, 6, 6)
    for name in ("segmentation", "detection", "colourisation"):
        inputs, outputs = task_batch(name, images, masks)
        task = get_task(name)
        for i in range(2):
            assert torch.allclose(inputs[i], task.input_cell(images[i]), atol=1e-6)
            target = images[i] if name == "colourisation" else (masks[i] > 0.5).numpy()
            assert torch.allclose(outputs[i], task.output_cell(target, (6, 6)), atol=1e-6)


def test_render_scene_is_render_array_plus_its_mask():
    from vlprompt.data.synthetic import render_array, render_scene

    image, mask = render_scene("red", "star", "benchmark", np.random.default_rng(5))
    assert np.array_equal(image, render_array("red", "star", "benchmark", np.random.default_rng(5)))
    assert mask.shape == (48, 48) and 0.05 < (mask > 0.5).mean() < 0.6 and mask.min() == 0.0
