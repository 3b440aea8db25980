"""Classification metrics: accuracy, mean per-class accuracy, expected calibration error, base-to-new harmonic
mean."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed as dist
from ..backbones import Backbone
from ..data.images import LabeledImages
from ..features import FeatureCache
from ..feed import Feed
from ..methods import PromptMethod

#: Images per batch when each brings its own test views (a test-time method's, e.g. TPT's 64 views each).
VIEW_BATCH = 4


@torch.no_grad()
def predict_logits(
    method: PromptMethod,
    backbone: Backbone,
    dataset: LabeledImages,
    cache: FeatureCache | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> Tensor:
    """Logits [N, C] of every image, batches from :class:`~vlprompt.feed.Feed`; class features are encoded once
    unless image-conditioned.

    Methods that see pixels are scored in batches, each rank its share under torchrun (then the shares are
    gathered); the others score cached frozen features. Images that bring their own test views (TPT's) are
    scored :data:`VIEW_BATCH` at a time.
    """
    method.eval()
    feed = Feed(backbone, dataset, method, cache, progress=progress)
    batch_size = min(batch_size, VIEW_BATCH) if feed.test_views is not None else batch_size
    text = method.reusable_text_features(backbone)
    shard = not feed.uses_cached_features
    show = progress and shard and dist.is_main()
    chunks = [torch.empty(0, method.num_classes)]
    for (batch,) in tqdm(feed.in_order(batch_size, shard), desc=f"score {method.name}", disable=not show, leave=False):
        chunks.append(method.score(backbone, batch, text).float().cpu())
    logits = torch.cat(chunks)
    return (dist.gather_shards(logits, len(feed)) if shard else logits).to(backbone.device)


def accuracy(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Overall accuracy, mean per-class accuracy (over classes present in ``labels``) and the expected calibration
    error of the logits as the method scores them (:func:`expected_calibration_error`)."""
    labels = labels.to(logits.device)
    correct = (logits.argmax(-1) == labels).float()
    per_class = [correct[labels == c].mean() for c in labels.unique()]
    return {
        "accuracy": float(correct.mean()),
        "mean_per_class_accuracy": float(torch.stack(per_class).mean()),
        "ece": expected_calibration_error(logits, labels),
    }


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 20) -> float:
    """ECE of the top softmax probability, as C-TPT measures it (C-TPT@085e6c2:tpt_classification.py:43-98): in
    ``bins`` equal-width bins (lo < confidence <= hi), Σ_b n_b / n · |accuracy_b − mean confidence_b|, a fraction
    (the tables print it in percent, as accuracy). Meaningful where the logits carry a logit scale."""
    confidence, predicted = logits.double().softmax(-1).max(-1)
    correct = (predicted == labels.to(logits.device)).double()
    edges = torch.linspace(0, 1, bins + 1).double().to(logits.device)  # float32 edges, as the release compares
    bin_of = torch.bucketize(confidence, edges) - 1  # edges[b] < confidence <= edges[b + 1]
    # n_b / n · |mean correct_b − mean confidence_b| = |Σ_b correct − Σ_b confidence| / n
    gap = correct.new_zeros(bins).index_add_(0, bin_of, correct - confidence)
    return float(gap.abs().sum()) / len(labels)


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
