"""Frozen image features, computed once per (backbone identity, transform, precision, image) and reused.

Under ``torchrun`` each rank encodes its share of the images not cached yet and the shares are
all-gathered, so N processes extract features N times faster instead of each encoding everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed as dist
from .backbones import Backbone
from .data.images import IMAGE_DECODING, LabeledImages
from .errors import OptionError
from .io import CorruptFileError, atomic_write

PRECISIONS = ("fp32", "bf16", "fp16")


def _image_key(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_table(file: Path) -> tuple[list[str], list[Tensor]]:
    """A persisted feature table (safetensors: never unpickled); anything else names the file to delete."""
    try:
        with safe_open(str(file), framework="pt") as fh:
            keys = json.loads(fh.metadata()["keys"])
            rows = list(fh.get_tensor("features"))
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as err:
        raise CorruptFileError(
            f"feature cache file {file} is not a vlprompt feature table ({err}); it is never unpickled: "
            "delete it and its features are computed again"
        ) from None
    if len(keys) != len(rows):
        raise CorruptFileError(
            f"feature cache file {file} is corrupted ({len(keys)} keys, {len(rows)} rows): delete it"
        )
    return keys, rows


class FeatureCache:
    """Image features of a frozen backbone, keyed per image file (path, size and mtime).

    One table per (backbone identity, transform, precision); features are computed only for images
    not seen before, so few-shot subsets, seeds and methods that leave the image tower untouched share
    them. With ``directory`` the tables persist across runs as safetensors files.

    Args:
        directory: where tables persist (None: in memory only).
        batch_size: images per encoder pass.
        num_workers: DataLoader workers for image decoding.
        precision: "fp32" (exact, the default), or "bf16" / "fp16" autocast on GPU (recorded in the key;
            stored features are float32 either way).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        precision: str = "fp32",
    ):
        if precision not in PRECISIONS:
            raise OptionError(f"feature precision must be one of {PRECISIONS}, not {precision!r}")
        self.directory = Path(directory) if directory else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.precision = precision
        #: images this process has encoded (a rank encodes only its share).
        self.images_encoded = 0
        self._tables: dict[str, tuple[dict[str, int], list[Tensor]]] = {}

    def _table_key(self, backbone: Backbone, dataset: LabeledImages, extra: str = "") -> str:
        parts = [backbone.identity.key, repr(dataset.transform), IMAGE_DECODING]
        if self.precision != "fp32":
            parts.append(self.precision)
        if extra:
            parts.append(extra)
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]

    def _table(self, key: str) -> tuple[dict[str, int], list[Tensor]]:
        if key not in self._tables:
            index: dict[str, int] = {}
            rows: list[Tensor] = []
            file = self.directory / f"{key}.safetensors" if self.directory else None
            if file is not None and file.is_file():
                keys, rows = _read_table(file)
                index = {k: i for i, k in enumerate(keys)}
            self._tables[key] = (index, rows)
        return self._tables[key]

    @torch.no_grad()
    def features(
        self, backbone: Backbone, dataset: LabeledImages, progress: bool = True, key_extra: str = "", keep: bool = True
    ) -> Tensor:
        """[N, D] float32 features of ``dataset``'s images (in order), on the backbone's device.

        ``key_extra`` separates tables of a backbone changed by a method's delta (its cache key). With ``keep``
        False the table is not kept in memory afterwards (one epoch's augmented views: persisted with
        ``directory``, read back from there by the next run that draws the same views).
        """
        key = self._table_key(backbone, dataset, key_extra)
        index, rows = self._table(key)
        image_keys = [_image_key(s.path) for s in dataset.samples]
        todo = sorted({i for i, k in enumerate(image_keys) if k not in index})
        if todo:
            fresh = dist.gather_shards(self._encode(backbone, dataset, dist.shard(todo), progress), len(todo))
            for i, row in zip(todo, fresh):
                if image_keys[i] not in index:
                    index[image_keys[i]] = len(rows)
                    rows.append(row)
            self._save(key, index, rows)
        if not keep:
            del self._tables[key]
        return torch.stack([rows[index[k]] for k in image_keys]).to(backbone.device)

    def _encode(self, backbone: Backbone, dataset: LabeledImages, indices: list[int], progress: bool) -> Tensor:
        """Features of ``dataset[indices]``, float32 on the CPU (like predict: cached and fresh agree)."""
        loader = DataLoader(
            dataset.subset(indices),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=backbone.device.type == "cuda",
        )
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        enabled = dtype is not None and backbone.device.type == "cuda"
        out = [torch.empty(0, backbone.embed_dim)]
        for pixels, _ in tqdm(loader, desc="image features", disable=not (progress and dist.is_main()), leave=False):
            with torch.autocast(backbone.device.type, dtype=dtype, enabled=enabled):
                out.append(backbone.encode_image(pixels).float().cpu())
            self.images_encoded += len(pixels)
        return torch.cat(out)

    def _save(self, key: str, index: dict[str, int], rows: list[Tensor]) -> None:
        if self.directory is None or not dist.is_main():
            return
        keys = sorted(index, key=index.__getitem__)
        table = {"features": torch.stack(rows).contiguous()}
        metadata = {"keys": json.dumps(keys)}
        atomic_write(self.directory / f"{key}.safetensors", lambda tmp: save_file(table, tmp, metadata=metadata))
