"""In-context prediction on image files: what ``vlprompt incontext`` runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import DataError, load_rgb
from ..errors import RunDirError
from ..io import atomic_write
from ..rundir import MARKER, check_run_dir, is_run_dir, prepare_run_dir
from .canvas import answer_cell, build_canvases, to_uint8
from .models import Inpainter
from .tasks import InContextTask, TaskInputError, check_examples, get_task

__all__ = ["check_incontext_out", "predict_files", "predict_images"]


def _open(path: str | Path, what: str) -> Image.Image:
    """An image file as 8-bit RGB, decoded as classification decodes it (:func:`vlprompt.data.images.load_rgb`:
    16-bit and float grey scaled by their depth, not clipped to white)."""
    path = Path(path)
    if not path.is_file():
        raise TaskInputError(f"{what}: no such image file {path}")
    try:
        return load_rgb(path)
    except DataError as err:
        raise TaskInputError(f"{what}: {path} is not a readable image ({err})") from None


def check_incontext_out(out: str | Path, overwrite: bool = False) -> Path:
    """``out`` can take the canvases and answers: missing, empty, or (with ``overwrite``) an earlier incontext run,
    which is replaced whole so that no answer of the earlier queries is left beside the new ones. Anything else
    (a file, a link, a folder of the user's files, an earlier run without ``overwrite``) is refused before any
    work."""
    out = Path(out)
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        if not is_run_dir(out):
            raise RunDirError(
                f"--out {out} is a folder vlprompt did not make (no {MARKER} marker) and holds files: choose a new "
                "or empty folder (vlprompt incontext never writes among other files)"
            )
        if not overwrite and any(p.name != MARKER for p in out.iterdir()):
            raise RunDirError(f"--out {out} holds an earlier run: pass --overwrite to replace it, or choose a new one")
    check_run_dir(out, resume=not overwrite, overwrite=overwrite)  # a file, a link, or a place it cannot write to
    return out


def _target_image(path: str | Path, task: InContextTask, what: str) -> Any:
    image = _open(path, what)
    return np.asarray(image.convert("L")) if task.name in ("segmentation", "detection") else image


def predict_images(
    model: Inpainter,
    task: str | InContextTask,
    example_inputs: Sequence[Any],
    example_outputs: Sequence[Any],
    queries: Sequence[Any],
) -> list[dict[str, Any]]:
    """Answer each query from every example (one canvas per example, predictions averaged).

    Returns, per query: ``{"canvas": filled first canvas [3, S, S], "answer": at the query's size,
    "cell_answer": as read in the cell}``.
    """
    task = get_task(task)
    pairs = check_examples(task, list(example_inputs), list(example_outputs))
    results = []
    for q, query in enumerate(queries):
        picture = task.input_cell(query, f"query {q + 1}")
        size = (picture.shape[1], picture.shape[2])
        canvases = build_canvases([p[0] for p in pairs], [p[1] for p in pairs], [picture] * len(pairs), model.layout)
        filled = model.fill(canvases, ensemble=len(pairs) > 1)
        cell = task.read(answer_cell(filled, model.layout))[0]
        results.append(
            {"canvas": filled[0], "cell_answer": cell, "answer": task.answer_at(cell, model.layout.cell, size)}
        )
    return results


def _save_png(array: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _answer_png(task: InContextTask, answer: Any, size: tuple[int, int]) -> np.ndarray:
    if task.name == "segmentation":
        return answer.numpy().astype(np.uint8) * 255
    if task.name == "detection":
        picture = np.zeros(size, np.uint8)
        if answer is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in answer)
            picture[y0:y1, x0:x1] = 255
        return picture
    return to_uint8(answer)


def _numbers(task: InContextTask, answer: Any) -> dict[str, Any]:
    if task.name == "segmentation":
        return {"foreground_fraction": round(float(answer.float().mean()), 4)}
    if task.name == "detection":
        return {"box": None if answer is None else [round(float(v), 1) for v in answer]}
    return {}


def predict_files(
    model: Inpainter,
    task: str | InContextTask,
    examples: Sequence[str],
    outputs: Sequence[str],
    queries: Sequence[str],
    out: str | Path,
    targets: Sequence[str] | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """:func:`predict_images` on files; writes ``canvas_<i>.png`` and ``answer_<i>.png`` per query into ``out``
    (see :func:`check_incontext_out`; ``overwrite`` replaces an earlier run there).

    With ``targets`` (one per query, drawn like the example outputs) each query is also scored at
    the cell's resolution (the task's metric).
    """
    task = get_task(task)
    if not queries:
        raise TaskInputError("give at least one query image")
    if targets and len(targets) != len(queries):
        raise TaskInputError(f"got {len(queries)} query image(s) but {len(targets)} target(s): one target per query")
    ex_in = [_open(p, f"example {i + 1} input") for i, p in enumerate(examples)]
    ex_out = [_target_image(p, task, f"example {i + 1} output") for i, p in enumerate(outputs)]
    query_images = [_open(p, f"query {i + 1}") for i, p in enumerate(queries)]
    out = check_incontext_out(out, overwrite)
    results = predict_images(model, task, ex_in, ex_out, query_images)
    prepare_run_dir(out, resume=not overwrite, overwrite=overwrite, command="incontext")
    records = []
    for i, (path, image, result) in enumerate(zip(queries, query_images, results)):
        size = (image.height, image.width)
        canvas = to_uint8(result["canvas"])
        _save_png(canvas, out / f"canvas_{i}.png")
        _save_png(_answer_png(task, result["answer"], size), out / f"answer_{i}.png")
        record: dict[str, Any] = {
            "query": str(path),
            "canvas": str(out / f"canvas_{i}.png"),
            "answer": str(out / f"answer_{i}.png"),
        }
        record.update(_numbers(task, result["answer"]))
        if targets:
            target = task.target_answer(_target_image(targets[i], task, f"target {i + 1}"), size, model.layout.cell)
            record[task.metric] = round(task.score(result["cell_answer"], target), 4)
        records.append(record)
    return records
