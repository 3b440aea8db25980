"""Classification metrics: accuracy, mean per-class accuracy, base-to-new harmonic mean."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import distributed as dist
from ..backbones import Backbone
from ..data.images import LabeledImages
from ..features import FeatureCache
from ..methods import Batch, PromptMethod


@torch.no_grad()
def predict_logits(
    method: PromptMethod,
    backbone: Backbone,
    dataset: LabeledImages,
    cache: FeatureCache | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> Tensor:
    """Logits [N, C] of every image; class features are encoded once unless image-conditioned.

    Methods that change the image tower see the images in batches (under torchrun each rank scores
    its share, then the shares are gathered); the others score cached frozen features.
    """
    method.eval()
    data = dataset.with_transform(backbone.image_transform())
    text = method.reusable_text_features(backbone)
    if method.changes_image_tower:
        mine = dist.shard(list(range(len(data))))
        loader = DataLoader(data.subset(mine), batch_size=batch_size, pin_memory=backbone.device.type == "cuda")
        disable = not (progress and dist.is_main())
        chunks = [torch.empty(0, method.num_classes)]
        for pixels, _ in tqdm(loader, desc=f"score {method.name}", disable=disable, leave=False):
            chunks.append(method.score(backbone, Batch(pixels=pixels), text).float().cpu())
        return dist.gather_shards(torch.cat(chunks), len(data)).to(backbone.device)
    feats = (cache or FeatureCache()).features(backbone, data, progress=progress, key_extra=method.cache_key())
    return torch.cat(
        [
            method.score(backbone, Batch(features=feats[s : s + batch_size]), text)
            for s in range(0, len(feats), batch_size)
        ]
    )


def accuracy(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Overall accuracy and mean per-class accuracy (over classes present in ``labels``)."""
    labels = labels.to(logits.device)
    correct = (logits.argmax(-1) == labels).float()
    per_class = [correct[labels == c].mean() for c in labels.unique()]
    return {
        "accuracy": float(correct.mean()),
        "mean_per_class_accuracy": float(torch.stack(per_class).mean()),
    }


def evaluate(
    method: PromptMethod,
    backbone: Backbone,
    dataset: LabeledImages,
    cache: FeatureCache | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Accuracy metrics of ``method`` on ``dataset``."""
    logits = predict_logits(method, backbone, dataset, cache, progress=progress)
    return accuracy(logits, torch.tensor(dataset.labels))


def harmonic_mean(a: float, b: float) -> float:
    """2ab/(a+b), 0 when either is 0 (base-to-new H)."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)
