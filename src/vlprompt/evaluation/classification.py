"""Classification metrics: accuracy, mean per-class accuracy, base-to-new harmonic mean."""

from __future__ import annotations

import torch
from torch import Tensor

from ..backbones import Backbone
from ..data.images import LabeledImages
from ..engine.features import FeatureCache
from ..methods import PromptMethod


@torch.no_grad()
def predict_logits(
    method: PromptMethod,
    backbone: Backbone,
    dataset: LabeledImages,
    cache: FeatureCache | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Logits [N, C] of every image; class features are encoded once unless image-conditioned."""
    method.eval()
    transform = backbone.image_transform()
    data = dataset.with_transform(transform)
    if method.changes_image_tower:
        feats = torch.cat(
            [
                method.image_features(
                    backbone, torch.stack([data[i][0] for i in range(s, min(s + batch_size, len(data)))])
                )
                for s in range(0, len(data), batch_size)
            ]
        )
    else:
        feats = (cache or FeatureCache()).features(backbone, data, progress=False)
    text = method.class_features(backbone)
    return torch.cat([method(backbone, feats[s : s + batch_size], text) for s in range(0, len(feats), batch_size)])


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
    method: PromptMethod, backbone: Backbone, dataset: LabeledImages, cache: FeatureCache | None = None
) -> dict[str, float]:
    """Accuracy metrics of ``method`` on ``dataset``."""
    logits = predict_logits(method, backbone, dataset, cache)
    return accuracy(logits, torch.tensor(dataset.labels))


def harmonic_mean(a: float, b: float) -> float:
    """2ab/(a+b), 0 when either is 0 (base-to-new H)."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)
