"""Frozen image features, computed once per (backbone identity, transform, image) and reused."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..backbones import Backbone
from ..data.images import IMAGE_DECODING, LabeledImages
from ..io import atomic_write
from . import distributed as dist


def _image_key(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


class FeatureCache:
    """Image features of a frozen backbone, keyed per image file (path, size and mtime).

    One table per (backbone identity, transform); features are computed only for images not seen
    before, so few-shot subsets, seeds and methods that leave the image tower untouched share them.
    With ``directory`` the tables persist across runs as safetensors files.
    """

    def __init__(self, directory: str | Path | None = None, batch_size: int = 256, num_workers: int = 0):
        self.directory = Path(directory) if directory else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._tables: dict[str, tuple[dict[str, int], list[Tensor]]] = {}

    def _table_key(self, backbone: Backbone, dataset: LabeledImages) -> str:
        blob = json.dumps([backbone.identity.key, repr(dataset.transform), IMAGE_DECODING]).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def _table(self, key: str) -> tuple[dict[str, int], list[Tensor]]:
        if key not in self._tables:
            index: dict[str, int] = {}
            rows: list[Tensor] = []
            file = self.directory / f"{key}.safetensors" if self.directory else None
            if file is not None and file.is_file():
                with safe_open(str(file), framework="pt") as fh:
                    keys = json.loads(fh.metadata()["keys"])
                    rows = list(fh.get_tensor("features"))
                index = {k: i for i, k in enumerate(keys)}
            self._tables[key] = (index, rows)
        return self._tables[key]

    @torch.no_grad()
    def features(self, backbone: Backbone, dataset: LabeledImages, progress: bool = True) -> Tensor:
        """[N, D] float32 features of ``dataset``'s images (in order), on the backbone's device."""
        key = self._table_key(backbone, dataset)
        index, rows = self._table(key)
        image_keys = [_image_key(s.path) for s in dataset.samples]
        todo = sorted({i for i, k in enumerate(image_keys) if k not in index})
        if todo:
            loader = DataLoader(dataset.subset(todo), batch_size=self.batch_size, num_workers=self.num_workers)
            it = tqdm(loader, desc="image features", disable=not progress, leave=False)
            out = []
            for pixels, _ in it:  # fp32, like predict: cached and fresh features agree
                out.append(backbone.encode_image(pixels).float().cpu())
            for i, row in zip(todo, torch.cat(out)):
                if image_keys[i] not in index:
                    index[image_keys[i]] = len(rows)
                    rows.append(row)
            self._save(key, index, rows)
        return torch.stack([rows[index[k]] for k in image_keys]).to(backbone.device)

    def _save(self, key: str, index: dict[str, int], rows: list[Tensor]) -> None:
        if self.directory is None or not dist.is_main():
            return
        keys = sorted(index, key=index.get)
        table = {"features": torch.stack(rows).contiguous()}
        metadata = {"keys": json.dumps(keys)}
        atomic_write(self.directory / f"{key}.safetensors", lambda tmp: save_file(table, tmp, metadata=metadata))

