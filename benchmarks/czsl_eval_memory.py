"""Peak memory and time of open-world CZSL evaluation at C-GQA size, streamed in chunks.

C-GQA has 413 attributes x 674 objects = 278,362 open-world pairs, 5,592 seen pairs and
7,280 / 5,098 validation / test images. This benchmark builds random pair and image features with
that shape (pair feature = normalised attribute + object vector, image feature = its pair's feature
plus noise, score = 100 x cosine), computes GloVe-style feasibility from random word vectors,
calibrates the feasibility threshold on validation and evaluates test with it. Scores are
produced 256 images at a time and never held as a whole matrix.

    python benchmarks/czsl_eval_memory.py            # writes benchmarks/results/czsl_eval_memory.json
    python benchmarks/czsl_eval_memory.py --smoke    # 20 x 30 pairs, 200 images: seconds, a temporary file

It reports the process's peak resident memory (``ru_maxrss``), its resident memory after the imports
and before the evaluation, what one full score matrix would take (N x P x 4 bytes) and what the
reference evaluator would hold at once, and the time of each phase with the score generation (the
matrix products) timed apart. On a machine whose cores are busy with other work, ``--threads 1``
avoids stalls at every parallel torch operation and is faster.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import parse_args  # benchmarks/common.py, beside this script

from vlprompt.data.czsl import CZSLSplit
from vlprompt.evaluation.czsl import calibrate_feasibility, evaluate_czsl, feasibility_scores
from vlprompt.io import atomic_write_text

GIB = 1024**3
LIMIT_BYTES = 4 * GIB
#: Full N x P float32 copies the reference (BatsResearch/csp evaluate.py) holds at its peak, by our
#: reading: the logits, the per-pair dict of columns, the stacked matrix and its clone, the clone in
#: generate_predictions and its two closed-world clones (plus bool masks and a gathered copy).
REFERENCE_COPIES = 7


def rss_now() -> int:
    """Current resident set size in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ScoreStream:
    """Scores ``scale * image @ pairs.T`` in row chunks; times the matrix products."""

    def __init__(self, images: torch.Tensor, pairs: torch.Tensor, chunk: int, scale: float = 100.0):
        self.images, self.pairs, self.chunk, self.scale = images, pairs, chunk, scale
        self.seconds = 0.0

    def __iter__(self):
        for start in range(0, self.images.shape[0], self.chunk):
            t0 = time.perf_counter()
            block = torch.mm(self.images[start : start + self.chunk], self.pairs.T).mul_(self.scale)
            self.seconds += time.perf_counter() - t0
            yield block
            del block


def make_problem(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed)
    n_attr, n_obj, dim = args.attrs, args.objs, args.dim
    n_pairs = n_attr * n_obj
    attr_vec = torch.randn(n_attr, dim, generator=g)
    obj_vec = torch.randn(n_obj, dim, generator=g)
    attr_of_pair = torch.arange(n_pairs) // n_obj
    obj_of_pair = torch.arange(n_pairs) % n_obj
    pair_feat = F.normalize(attr_vec[attr_of_pair] + obj_vec[obj_of_pair], dim=1)
    order = torch.randperm(n_pairs, generator=g)
    seen_mask = torch.zeros(n_pairs, dtype=torch.bool)
    seen_mask[order[: args.seen_pairs]] = True
    unseen_pool = {
        "val": order[args.seen_pairs : args.seen_pairs + args.unseen_pairs],
        "test": order[args.seen_pairs + args.unseen_pairs : args.seen_pairs + 2 * args.unseen_pairs],
    }
    seen_cols = order[: args.seen_pairs]
    out = {
        "attr_of_pair": attr_of_pair,
        "obj_of_pair": obj_of_pair,
        "pair_feat": pair_feat,
        "seen_mask": seen_mask,
        # Word vectors for feasibility: noisy copies of the primitives' vectors.
        "attr_words": attr_vec + 0.5 * torch.randn(n_attr, dim, generator=g),
        "obj_words": obj_vec + 0.5 * torch.randn(n_obj, dim, generator=g),
    }
    for phase, n_images in (("val", args.val_images), ("test", args.test_images)):
        is_seen = torch.rand(n_images, generator=g) < 0.5
        seen_pick = seen_cols[torch.randint(len(seen_cols), (n_images,), generator=g)]
        unseen_pick = unseen_pool[phase][torch.randint(len(unseen_pool[phase]), (n_images,), generator=g)]
        labels = torch.where(is_seen, seen_pick, unseen_pick)
        noise = args.noise * torch.randn(n_images, dim, generator=g)
        out[f"{phase}_labels"] = labels
        out[f"{phase}_images"] = F.normalize(pair_feat[labels] + noise, dim=1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attrs", type=int, default=413)
    parser.add_argument("--objs", type=int, default=674)
    parser.add_argument("--seen-pairs", type=int, default=5592)
    parser.add_argument("--unseen-pairs", type=int, default=1000, help="unseen pairs drawn for val and for test")
    parser.add_argument("--val-images", type=int, default=7280)
    parser.add_argument("--test-images", type=int, default=5098)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--noise", type=float, default=0.25, help="std of the image-feature noise")
    parser.add_argument("--chunk", type=int, default=256, help="images per score chunk")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    smoke = {"attrs": 20, "objs": 30, "seen_pairs": 50, "unseen_pairs": 20, "val_images": 100, "test_images": 100,
             "chunk": 32}  # fmt: skip
    args = parse_args(parser, "czsl_eval_memory", smoke, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rss_imports = rss_now()

    t0 = time.perf_counter()
    problem = make_problem(args)
    t_setup = time.perf_counter() - t0
    n_pairs = args.attrs * args.objs

    # Feasibility is defined on a split: name the primitives so that sorted names keep index order.
    attrs = [f"a{i:04d}" for i in range(args.attrs)]
    objs = [f"o{i:04d}" for i in range(args.objs)]

    def names(cols: torch.Tensor) -> list[tuple[str, str]]:
        return [(attrs[p // args.objs], objs[p % args.objs]) for p in cols.tolist()]

    seen_names = names(problem["seen_mask"].nonzero().squeeze(1))
    val_names = seen_names + names(problem["val_labels"][~problem["seen_mask"][problem["val_labels"]]].unique())
    test_names = seen_names + names(problem["test_labels"][~problem["seen_mask"][problem["test_labels"]]].unique())
    split = CZSLSplit(
        root=Path("."),
        split="synthetic",
        attrs=attrs,
        objs=objs,
        train_pairs=seen_names,
        val_pairs=val_names,
        test_pairs=test_names,
        pairs=sorted(set(val_names + test_names)),
    )
    t0 = time.perf_counter()
    feasibility = feasibility_scores(split, problem["attr_words"], problem["obj_words"])
    t_feas = time.perf_counter() - t0

    rss_before = rss_now()
    peak_before = peak_rss()

    val_stream = ScoreStream(problem["val_images"], problem["pair_feat"], args.chunk)
    t0 = time.perf_counter()
    calibration = calibrate_feasibility(val_stream, problem["val_labels"], problem["seen_mask"], feasibility)
    t_cal = time.perf_counter() - t0
    peak_after_cal = peak_rss()

    removed = calibration.removed_mask(feasibility, problem["seen_mask"])
    test_stream = ScoreStream(problem["test_images"], problem["pair_feat"], args.chunk)
    t0 = time.perf_counter()
    result = evaluate_czsl(
        test_stream,
        problem["test_labels"],
        problem["seen_mask"],
        problem["attr_of_pair"],
        problem["obj_of_pair"],
        removed_mask=removed,
    )
    t_test = time.perf_counter() - t0
    peak_end = peak_rss()

    chunk_bytes = args.chunk * n_pairs * 4
    val_matrix = args.val_images * n_pairs * 4
    test_matrix = args.test_images * n_pairs * 4
    report = {
        "benchmark": "czsl_eval_memory",
        **({"smoke": True, "note": "--smoke run: tiny sizes, the numbers mean nothing"} if args.smoke else {}),
        "shape": {
            "attrs": args.attrs,
            "objs": args.objs,
            "open_world_pairs": n_pairs,
            "seen_pairs": args.seen_pairs,
            "val_images": args.val_images,
            "test_images": args.test_images,
            "feature_dim": args.dim,
            "chunk_images": args.chunk,
        },
        "memory_gib": {
            "peak_rss": peak_end / GIB,
            "peak_rss_before_evaluation": peak_before / GIB,
            "rss_after_imports": rss_imports / GIB,
            "rss_before_evaluation": rss_before / GIB,
            "peak_rss_after_calibration": peak_after_cal / GIB,
            "peak_minus_rss_before_evaluation": (peak_end - rss_before) / GIB,
            "one_score_chunk": chunk_bytes / GIB,
            "full_val_score_matrix": val_matrix / GIB,
            "full_test_score_matrix": test_matrix / GIB,
            "reference_estimate_val": REFERENCE_COPIES * val_matrix / GIB,
            "reference_estimate_test": REFERENCE_COPIES * test_matrix / GIB,
            "reference_estimate_note": (
                f"{REFERENCE_COPIES} simultaneous N x P float32 copies, from reading csp's evaluate.py; "
                "the spec (CZSL.md) quotes about 256 GB for open-world C-GQA"
            ),
            "limit": LIMIT_BYTES / GIB,
        },
        "seconds": {
            "setup": t_setup,
            "feasibility": t_feas,
            "calibration_total": t_cal,
            "calibration_score_generation": val_stream.seconds,
            "calibration_without_generation": t_cal - val_stream.seconds,
            "test_total": t_test,
            "test_score_generation": test_stream.seconds,
            "test_without_generation": t_test - test_stream.seconds,
        },
        "calibration": {
            "threshold": calibration.threshold,
            "index": calibration.index,
            "best_val_auc": max(calibration.val_auc),
            "n_thresholds": len(calibration.thresholds),
        },
        "test_result_percent": result.as_percent(),
        "n_biases": len(result.biases),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "ok": peak_end < LIMIT_BYTES,
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    pct = result.as_percent()
    print(
        f"czsl_eval_memory: {args.val_images}+{args.test_images} images x {n_pairs} pairs: "
        f"peak RSS {peak_end / GIB:.2f} GiB (before eval {rss_before / GIB:.2f} GiB; one full test matrix "
        f"{test_matrix / GIB:.1f} GiB, reference ~{REFERENCE_COPIES * val_matrix / GIB:.0f} GiB), "
        f"calibration {t_cal:.1f}s ({val_stream.seconds:.1f}s scores), test {t_test:.1f}s "
        f"({test_stream.seconds:.1f}s scores); test S/U/H/AUC {pct['best_seen']:.1f}/{pct['best_unseen']:.1f}/"
        f"{pct['best_hm']:.1f}/{pct['auc']:.2f}; {'OK' if report['ok'] else 'OVER 4 GiB'} -> {args.out}"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
