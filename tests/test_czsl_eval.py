"""CZSL evaluation: hand-worked cases, equality with a test-only copy of the reference procedure,
invariants, chunking, calibration, feasibility and word vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vlprompt.evaluation.czsl as czsl_eval
from vlprompt.data.czsl import CZSLSplit
from vlprompt.data.images import DataError
from vlprompt.evaluation.czsl import (
    LARGE_BIAS,
    REFERENCE_GLOVE_ALIASES,
    calibrate_feasibility,
    evaluate_czsl,
    evaluate_split,
    feasibility_scores,
    load_glove,
    removed_below,
)

# ------------------------------------------------------------------------------------------------
# A test-only oracle: the reference evaluator's procedure done the plain, memory-hungry way
# (a full biased copy of the score matrix per bias), as read from ExplainableML/czsl and
# BatsResearch/csp. Only for checking the streamed implementation.
# ------------------------------------------------------------------------------------------------


def torch_topk(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """What the reference calls: torch.topk (ties unspecified)."""
    return matrix.topk(k, dim=1).indices


def stable_topk(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k with ties to the lower column (the rule the streamed evaluator documents)."""
    return torch.sort(matrix, dim=1, descending=True, stable=True).indices[:, :k]


def oracle(scores, labels, seen_mask, attr_of_pair, obj_of_pair, keep_mask=None, topk=1, select=torch_topk):
    """Seen/unseen curve, AUC, HM and attribute/object accuracy, following the reference's steps."""
    s = scores.float()
    n, p = s.shape
    keep = torch.ones(p, dtype=torch.bool) if keep_mask is None else keep_mask
    true_attr, true_obj = attr_of_pair[labels], obj_of_pair[labels]
    image_seen = seen_mask[labels]
    unseen = ~image_seen

    def matches(matrix):
        chosen = select(matrix, topk)
        attr_ok = attr_of_pair[chosen] == true_attr[:, None]
        obj_ok = obj_of_pair[chosen] == true_obj[:, None]
        return (attr_ok & obj_ok).any(1).float(), attr_ok.any(1).float(), obj_ok.any(1).float()

    def with_bias(bias):
        shifted = s.clone()
        shifted[:, ~seen_mask] += bias
        shifted[:, ~keep] = -1e10
        return shifted

    hit_large = matches(with_bias(1000.0))[0]
    unbiased = s.clone()
    unbiased[:, ~keep] = -1e10
    _, attr_hit, obj_hit = matches(unbiased)
    true_scores = s[torch.arange(n), labels][unseen]
    kth_seen = s[unseen][:, seen_mask].topk(topk, dim=1).values[:, topk - 1]
    gaps = (kth_seen - true_scores)[hit_large[unseen].bool()] - 1e-4
    gaps = torch.sort(gaps)[0]
    biases = gaps[:: max(len(gaps) // 20, 1)]
    seen_acc, unseen_acc = [], []
    for bias in biases:
        hit = matches(with_bias(bias))[0]
        seen_acc.append(float(hit[image_seen].mean()))
        unseen_acc.append(float(hit[unseen].mean()))
    seen_acc.append(float(hit_large[image_seen].mean()))
    unseen_acc.append(float(hit_large[unseen].mean()))
    sa, ua = np.array(seen_acc), np.array(unseen_acc)
    hm = [0.0 if a == 0 or b == 0 else 1.0 / ((1.0 / a + 1.0 / b) / 2.0) for a, b in zip(sa, ua)]
    return {
        "best_seen": float(sa.max()),
        "best_unseen": float(ua.max()),
        "best_hm": float(max(hm)),
        "auc": float(czsl_eval._trapezoid(sa, ua)),
        "attr_acc": float(attr_hit.mean()),
        "obj_acc": float(obj_hit.mean()),
        "biases": [float(b) for b in biases] + [1000.0],
        "seen_acc": seen_acc,
        "unseen_acc": unseen_acc,
    }


def oracle_calibration(scores, labels, seen_mask, attr_of_pair, obj_of_pair, feasibility, thresholds, topk):
    """Validation AUC per threshold with removed pairs at -inf, and the reference's choice rule."""
    aucs = []
    for th in thresholds:
        removed = ~seen_mask & (feasibility < torch.tensor(th, dtype=torch.float32))
        filtered = scores.clone()
        filtered[:, removed] = float("-inf")
        aucs.append(oracle(filtered, labels, seen_mask, attr_of_pair, obj_of_pair, None, topk, stable_topk)["auc"])
    best_auc, best_index = 0.0, 0
    for i, auc in enumerate(aucs):
        if auc > best_auc:
            best_auc, best_index = auc, i
    return aucs, best_index


def as_fields(result) -> dict:
    return {
        "best_seen": result.best_seen,
        "best_unseen": result.best_unseen,
        "best_hm": result.best_hm,
        "auc": result.auc,
        "attr_acc": result.attr_acc,
        "obj_acc": result.obj_acc,
        "biases": list(result.biases),
        "seen_acc": list(result.seen_acc),
        "unseen_acc": list(result.unseen_acc),
    }


def random_case(seed, n=60, n_attr=6, n_obj=9, open_world=False, integers=False, seen_fraction=0.5):
    """Random scores over attr-major pair columns; closed world drops a fifth of the columns."""
    g = torch.Generator().manual_seed(seed)
    p = n_attr * n_obj
    attr_of_pair, obj_of_pair = torch.arange(p) // n_obj, torch.arange(p) % n_obj
    order = torch.randperm(p, generator=g)
    seen = torch.zeros(p, dtype=torch.bool)
    seen[order[: int(p * seen_fraction)]] = True
    keep = torch.ones(p, dtype=torch.bool)
    if not open_world:
        keep[order[int(p * 0.8) :]] = False
    allowed = keep.nonzero().squeeze(1)
    labels = allowed[torch.randint(len(allowed), (n,), generator=g)]
    labels[0] = allowed[seen[allowed]][0]  # at least one seen and one unseen image
    labels[1] = allowed[~seen[allowed]][0]
    if integers:  # many exact ties
        scores = torch.randint(-3, 4, (n, p), generator=g).float()
    else:
        scores = 3 * torch.randn(n, p, generator=g)
        scores[torch.arange(n), labels] += 2
    return scores, labels, seen, attr_of_pair, obj_of_pair, None if open_world else keep


# ------------------------------------------------------------------------------------------------
# Hand-worked cases
# ------------------------------------------------------------------------------------------------

# Attributes a0, a1 and objects o0, o1, o2; columns are attribute-major:
#   0 (a0,o0)  1 (a0,o1)  2 (a0,o2)  3 (a1,o0)  4 (a1,o1)  5 (a1,o2)
# Seen (train) pairs: columns 0, 1, 4. Images: two seen (columns 0 and 4), two unseen (2 and 5).
HAND_ATTR = torch.tensor([0, 0, 0, 1, 1, 1])
HAND_OBJ = torch.tensor([0, 1, 2, 0, 1, 2])
HAND_SEEN = torch.tensor([True, True, False, False, True, False])
HAND_LABELS = torch.tensor([0, 4, 2, 5])
HAND_SCORES = torch.tensor(
    [
        [5.0, 1.0, 4.0, 0.0, 2.0, 3.0],  # seen, true 5; best unseen 4 (col 2): correct while b < 1
        [1.0, 0.0, 0.0, 1.0, 4.0, 0.0],  # seen, true 4; best unseen 1 (col 3): correct while b < 3
        [3.0, 1.0, 2.0, 0.0, 1.0, 1.0],  # unseen, true 2; best seen 3: correct once b > 1
        [2.0, 1.0, 0.0, 1.0, 7.0, 5.0],  # unseen, true 5; best seen 7: correct once b > 2
    ]
)


def test_hand_case_top1():
    # At b = +1000 both unseen images are right (their pair is the best non-seen one) and both seen
    # images wrong. Gaps (best seen - true) of those unseen images: 3 - 2 = 1 and 7 - 5 = 2, minus
    # 1e-4 -> biases [0.9999, 1.9999] (n = 2, so every one is kept).
    #   b = 0.9999: seen 5 > 4.9999 ok, 4 > 1.9999 ok; unseen 2.9999 < 3, 5.9999 < 7 -> S 1,   U 0
    #   b = 1.9999: seen 5 < 5.9999 no, 4 > 2.9999 ok; unseen 3.9999 > 3 ok, 6.9999 < 7 -> S 0.5, U 0.5
    #   b = 1000:                                                             -> S 0,   U 1
    # AUC (S over U): 0.5 * (1 + 0.5) / 2 + 0.5 * (0.5 + 0) / 2 = 0.5; HM 0, 0.5, 0 -> 0.5.
    # At b = 0 the top-1 pairs are cols 0, 4, 0, 4: attributes all right, objects right for the
    # two seen images only -> attr 1.0, obj 0.5.
    r = evaluate_czsl(HAND_SCORES, HAND_LABELS, HAND_SEEN, HAND_ATTR, HAND_OBJ)
    gap = torch.tensor([1.0, 2.0]) - 1e-4
    assert r.biases == (float(gap[0]), float(gap[1]), LARGE_BIAS)
    assert r.seen_acc == (1.0, 0.5, 0.0)
    assert r.unseen_acc == (0.0, 0.5, 1.0)
    assert (r.best_seen, r.best_unseen, r.best_hm, r.auc) == (1.0, 1.0, 0.5, 0.5)
    assert (r.attr_acc, r.obj_acc) == (1.0, 0.5)
    assert (r.n_seen, r.n_unseen) == (2, 2)
    assert r.harmonic_means == (0.0, 0.5, 0.0)
    assert r.best_hm_bias == float(gap[1])
    assert r.as_percent() == {
        "best_seen": 100.0,
        "best_unseen": 100.0,
        "best_hm": 50.0,
        "auc": 50.0,
        "attr_acc": 100.0,
        "obj_acc": 50.0,
    }


def test_hand_case_top2():
    # k = 2. Gaps use the 2nd best seen score: image 2 has seen scores 3, 1, 1 -> 1 - 2 = -1;
    # image 3 has 2, 1, 7 -> 2 - 5 = -3. Both unseen images are right at +1000 -> biases
    # [-3.0001, -1.0001].
    #   b = -3.0001: seen images both right; image 2: 2 - 3.0001 is beaten by all three seen
    #                scores, image 3: 1.9999 beaten by 7 and 2 -> S 1, U 0
    #   b = -1.0001: image 0: 5 beats 2.9999 and everything else; image 1 likewise; image 2:
    #                0.9999 beaten by 3, 1, 1 -> no; image 3: 3.9999 only beaten by 7 -> yes
    #                -> S 1, U 0.5
    #   b = 1000:    seen images each lose to two biased unseen pairs -> S 0, U 1
    # AUC: 0.5 * (1 + 1) / 2 + 0.5 * (1 + 0) / 2 = 0.75; HM at (1, 0.5) = 2/3.
    # b = 0 top-2: {0, 2}, {4, 0 (ties with col 3, lower index wins)}, {0, 2}, {4, 5}: every
    # image has its attribute and its object among them.
    r = evaluate_czsl(HAND_SCORES, HAND_LABELS, HAND_SEEN, HAND_ATTR, HAND_OBJ, topk=2)
    gap = torch.tensor([-3.0, -1.0]) - 1e-4
    assert r.biases == (float(gap[0]), float(gap[1]), LARGE_BIAS)
    assert r.seen_acc == (1.0, 1.0, 0.0)
    assert r.unseen_acc == (0.0, 0.5, 1.0)
    assert r.auc == 0.75
    assert r.best_hm == pytest.approx(2 / 3, abs=1e-15)
    assert (r.attr_acc, r.obj_acc) == (1.0, 1.0)


def test_hand_case_closed_mask_and_removal():
    # Masking column 5 (image 3's pair may not be masked, so drop image 3 and mask column 5):
    # image 1's only other biased competitor above -1e10 is col 3 (1 + b) -> unchanged; image 0
    # loses its col 5 competitor (3 + b), which never mattered (col 2 at 4 + b is higher).
    keep = torch.tensor([True, True, True, True, True, False])
    scores, labels = HAND_SCORES[:3], HAND_LABELS[:3]
    r = evaluate_czsl(scores, labels, HAND_SEEN, HAND_ATTR, HAND_OBJ, keep_mask=keep)
    # One unseen image (gap 0.9999): at 0.9999 S 1 U 0; at 1000 S 0 U 1 -> AUC 0.5, HM 0.
    assert r.seen_acc == (1.0, 0.0) and r.unseen_acc == (0.0, 1.0)
    assert (r.auc, r.best_hm) == (0.5, 0.0)
    # Removing column 2 (image 0's strongest competitor) as infeasible keeps image 0 right at
    # every bias below 2 (its next competitor is col 5 at 3 + b); image 2's own pair is column 2,
    # so it now scores -inf and is never right.
    removed = torch.tensor([False, False, True, False, False, False])
    r = evaluate_czsl(scores, labels, HAND_SEEN, HAND_ATTR, HAND_OBJ, removed_mask=removed)
    assert r.biases == (LARGE_BIAS,) and r.seen_acc == (0.0,) and r.unseen_acc == (0.0,)
    assert r.auc == 0.0


# ------------------------------------------------------------------------------------------------
# Equality with the reference procedure
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("open_world", [False, True])
@pytest.mark.parametrize("topk", [1, 3])
def test_matches_reference_with_torch_topk(open_world, topk):
    """Continuous scores: exactly the numbers of the reference procedure with torch.topk itself."""
    for seed in range(25):
        scores, labels, seen, attrs, objs, keep = random_case(seed, open_world=open_world)
        got = evaluate_czsl(scores, labels, seen, attrs, objs, keep_mask=keep, topk=topk)
        want = oracle(scores, labels, seen, attrs, objs, keep, topk, torch_topk)
        assert as_fields(got) == want, seed


@pytest.mark.parametrize("open_world", [False, True])
@pytest.mark.parametrize("topk", [1, 3])
@pytest.mark.parametrize("width", [256, 2, 3])
def test_matches_reference_with_ties(open_world, topk, width, monkeypatch):
    """Integer scores (ties everywhere), tied column blocks of several widths, chunked input."""
    monkeypatch.setattr(czsl_eval, "SPLIT_BLOCK", width)
    for seed in range(15):
        scores, labels, seen, attrs, objs, keep = random_case(seed, open_world=open_world, integers=True)
        chunks = [scores[:7], scores[7:40], scores[40:]]
        got = evaluate_czsl(chunks, labels, seen, attrs, objs, keep_mask=keep, topk=topk)
        want = oracle(scores, labels, seen, attrs, objs, keep, topk, stable_topk)
        assert as_fields(got) == want, seed


def test_float32_rounding_ties_at_large_bias():
    """Scores 1e-3 apart collide after + 1000 in float32; with 80 columns torch.topk (k = 1)
    keeps the first of equal values, so the reference's own tie-breaking is reproduced."""
    for seed in range(20):
        scores, labels, seen, attrs, objs, keep = random_case(seed, n_attr=8, n_obj=10, open_world=True)
        scores = 20 + 1e-3 * scores
        got = evaluate_czsl(scores, labels, seen, attrs, objs)
        assert as_fields(got) == oracle(scores, labels, seen, attrs, objs, None, 1, torch_topk), seed
        assert as_fields(got) == oracle(scores, labels, seen, attrs, objs, None, 1, stable_topk), seed


@pytest.mark.parametrize("topk", [1, 2])
def test_removed_and_extreme_scores_match_reference(topk, monkeypatch):
    monkeypatch.setattr(czsl_eval, "SPLIT_BLOCK", 3)
    for seed in range(20):
        for open_world in (False, True):
            scores, labels, seen, attrs, objs, keep = random_case(seed, open_world=open_world, integers=seed % 2 == 0)
            scores[:, ::7] = -1e10
            scores[::3, 1::5] = float("-inf")
            removed = (torch.rand(len(seen), generator=torch.Generator().manual_seed(seed)) < 0.4) & ~seen
            filtered = scores.clone()
            filtered[:, removed] = float("-inf")
            got = evaluate_czsl(scores, labels, seen, attrs, objs, keep_mask=keep, removed_mask=removed, topk=topk)
            assert as_fields(got) == oracle(filtered, labels, seen, attrs, objs, keep, topk, stable_topk), seed


def test_wide_rows_use_column_blocks():
    """Over 1,024 columns the split top-k works block-wise; still the reference's numbers."""
    for seed in range(3):
        scores, labels, seen, attrs, objs, _ = random_case(seed, n=40, n_attr=40, n_obj=50, open_world=True)
        for topk in (1, 3):
            got = evaluate_czsl(scores, labels, seen, attrs, objs, topk=topk)
            assert as_fields(got) == oracle(scores, labels, seen, attrs, objs, None, topk, torch_topk)


# ------------------------------------------------------------------------------------------------
# Invariants
# ------------------------------------------------------------------------------------------------


@st.composite
def grid_cases(draw):
    """Scores on a 1/8 grid (no float32 collisions after a shared bias), with seen/unseen images."""
    n_attr = draw(st.integers(2, 4))
    n_obj = draw(st.integers(2, 5))
    p = n_attr * n_obj
    seen = draw(st.lists(st.booleans(), min_size=p, max_size=p).filter(lambda s: 1 <= sum(s) < p))
    seen_cols = [i for i, s in enumerate(seen) if s]
    unseen_cols = [i for i, s in enumerate(seen) if not s]
    n = draw(st.integers(2, 12))
    labels = [draw(st.sampled_from(seen_cols)), draw(st.sampled_from(unseen_cols))]
    labels += draw(st.lists(st.integers(0, p - 1), min_size=n - 2, max_size=n - 2))
    grid = draw(st.lists(st.integers(-64, 64), min_size=n * p, max_size=n * p))
    topk = draw(st.integers(1, len(seen_cols)).map(lambda k: min(k, 3)))
    scores = torch.tensor(grid, dtype=torch.float32).view(n, p) / 8
    attrs, objs = torch.arange(p) // n_obj, torch.arange(p) % n_obj
    return scores, torch.tensor(labels), torch.tensor(seen), attrs, objs, topk


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid_cases())
def test_invariants(case):
    scores, labels, seen, attrs, objs, topk = case
    r = evaluate_czsl(scores, labels, seen, attrs, objs, topk=topk)
    seen_acc, unseen_acc = np.array(r.seen_acc), np.array(r.unseen_acc)
    assert list(r.biases) == sorted(r.biases) and r.biases[-1] == LARGE_BIAS
    # Raising the bias on non-seen pairs never helps a seen image or hurts an unseen one.
    assert np.all(np.diff(seen_acc) <= 0) and np.all(np.diff(unseen_acc) >= 0)
    assert r.best_seen == seen_acc[0] and r.best_unseen == unseen_acc[-1]
    assert 0.0 <= r.auc <= r.best_seen * r.best_unseen <= 1.0
    hm = np.array(r.harmonic_means)
    assert np.all(hm <= np.maximum(seen_acc, unseen_acc) + 1e-12)
    assert np.all(hm <= 2 * np.minimum(seen_acc, unseen_acc) + 1e-12)
    assert np.all((hm >= np.minimum(seen_acc, unseen_acc) - 1e-12) | (hm == 0))
    assert r.best_hm <= max(r.best_seen, r.best_unseen) and r.best_hm <= 2 * min(r.best_seen, r.best_unseen)
    assert 0 <= r.attr_acc <= 1 and 0 <= r.obj_acc <= 1
    assert as_fields(r) == oracle(scores, labels, seen, attrs, objs, None, topk, stable_topk)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(1, 20), min_size=1, max_size=6))
def test_chunked_equals_whole(seed, cuts):
    scores, labels, seen, attrs, objs, keep = random_case(seed % 50, open_world=seed % 2 == 0)
    bounds = sorted({min(sum(cuts[: i + 1]), len(labels)) for i in range(len(cuts))} | {len(labels)})
    chunks, start = [], 0
    for stop in bounds:
        chunks.append(scores[start:stop])
        start = stop
    whole = evaluate_czsl(scores, labels, seen, attrs, objs, keep_mask=keep, topk=2)
    streamed = evaluate_czsl(iter(chunks), labels, seen, attrs, objs, keep_mask=keep, topk=2)
    assert streamed == whole


def test_dtypes_and_generators():
    scores, labels, seen, attrs, objs, keep = random_case(3)
    base = evaluate_czsl(scores, labels, seen, attrs, objs, keep_mask=keep)
    as_double = evaluate_czsl(scores.double(), labels.tolist(), seen, attrs, objs, keep_mask=keep)
    generated = evaluate_czsl((scores[i : i + 5] for i in range(0, 60, 5)), labels, seen, attrs, objs, keep_mask=keep)
    assert base == as_double == generated
    assert base.to_dict()["biases"] == list(base.biases)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_input_errors():
    scores, labels, seen, attrs, objs, keep = random_case(0)
    nan = scores.clone()
    nan[5, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        evaluate_czsl(nan, labels, seen, attrs, objs)
    nan_true = scores.clone()
    nan_true[4, labels[4]] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        evaluate_czsl(nan_true, labels, seen, attrs, objs)
    with pytest.raises(ValueError, match="shape"):
        evaluate_czsl(scores[:, :-1], labels, seen, attrs, objs)
    with pytest.raises(ValueError, match="more rows"):
        evaluate_czsl([scores, scores[:1]], labels, seen, attrs, objs)
    with pytest.raises(ValueError, match="59 rows"):
        evaluate_czsl(scores[:-1], labels, seen, attrs, objs)
    with pytest.raises(TypeError, match="chunk 1"):
        evaluate_czsl([scores[:3], "x"], labels, seen, attrs, objs)
    with pytest.raises(ValueError, match="column indices"):
        evaluate_czsl(scores, labels + 100, seen, attrs, objs)
    with pytest.raises(ValueError, match="keep every seen"):
        evaluate_czsl(scores, labels, seen, attrs, objs, keep_mask=~seen)
    drop_label = torch.ones_like(seen)
    drop_label[labels[1]] = False
    with pytest.raises(ValueError, match="drops column"):
        evaluate_czsl(scores, labels, seen, attrs, objs, keep_mask=drop_label)
    with pytest.raises(ValueError, match="must not remove seen"):
        evaluate_czsl(scores, labels, seen, attrs, objs, removed_mask=seen.clone())
    with pytest.raises(ValueError, match="no images of unseen"):
        evaluate_czsl(scores[:1], labels[:1], seen, attrs, objs)
    with pytest.raises(ValueError, match="seen columns"):
        evaluate_czsl(scores, labels, seen, attrs, objs, topk=int(seen.sum()) + 1)
    with pytest.raises(ValueError, match="same \\(attribute, object\\)"):
        evaluate_czsl(scores, labels, seen, attrs, torch.zeros_like(objs))
    with pytest.raises(ValueError, match="bool"):
        evaluate_czsl(scores, labels, seen.long(), attrs, objs)


# ------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("topk", [1, 2])
@pytest.mark.parametrize("width", [256, 3])
def test_calibration_matches_per_threshold_evaluation(topk, width, monkeypatch):
    monkeypatch.setattr(czsl_eval, "SPLIT_BLOCK", width)
    for seed in range(6):
        scores, labels, seen, attrs, objs, _ = random_case(seed, n=80, open_world=True)
        feas = torch.rand(len(seen), generator=torch.Generator().manual_seed(seed)) * 2 - 1
        feas[seen] = 0.0
        cal = calibrate_feasibility([scores[:30], scores[30:]], labels, seen, feas, topk=topk, n_thresholds=12)
        non_seen = feas[~seen]
        assert cal.thresholds[0] == float(non_seen.min()) and cal.thresholds[-1] == float(non_seen.max())
        aucs, index = oracle_calibration(scores, labels, seen, attrs, objs, feas, cal.thresholds, topk)
        assert list(cal.val_auc) == aucs
        assert cal.index == index and cal.threshold == cal.thresholds[index]
        # Applying the threshold through removed_mask gives the same AUC as the sweep saw.
        removed = cal.removed_mask(feas, seen)
        assert torch.equal(removed, removed_below(feas, seen, cal.threshold))
        applied = evaluate_czsl(scores, labels, seen, attrs, objs, removed_mask=removed, topk=topk)
        assert applied.auc == cal.val_auc[cal.index]


def test_calibration_hand_case():
    # Non-seen columns 2, 3, 5 have feasibility -0.5, 0.5, 0 -> thresholds -0.5, 0, 0.5.
    # -0.5 removes nothing: the top-1 hand case, AUC 0.5.
    #  0   removes col 2, image 2's own pair: only image 3 (gap 1.9999) is left to be right.
    #      b = 1.9999: seen 5 > 4.9999 (col 5) ok, 4 > 2.9999 ok; unseen images both wrong
    #      b = 1000: S 0, U 0.5 -> points (U 0, S 1), (0.5, 0) -> AUC 0.25
    #  0.5 also removes col 5, image 3's pair: no unseen image is ever right -> AUC 0.
    # The first (strictly) best is the first threshold.
    feas = torch.tensor([0.0, 0.0, -0.5, 0.5, 0.0, 0.0])
    cal = calibrate_feasibility(HAND_SCORES, HAND_LABELS, HAND_SEEN, feas, n_thresholds=3)
    assert cal.thresholds == (-0.5, 0.0, 0.5)
    assert cal.val_auc == (0.5, 0.25, 0.0)
    assert (cal.index, cal.threshold) == (0, -0.5)
    aucs, index = oracle_calibration(HAND_SCORES, HAND_LABELS, HAND_SEEN, HAND_ATTR, HAND_OBJ, feas, cal.thresholds, 1)
    assert list(cal.val_auc) == aucs and cal.index == index
    # When no threshold gives an AUC above 0 the first one, which removes nothing, is kept: here
    # col 3 beats both unseen pairs and is the most feasible non-seen pair, so removing it always
    # removes theirs too.
    hopeless = HAND_SCORES.clone()
    hopeless[2, 3], hopeless[3, 3] = 5.0, 6.0
    feas = torch.tensor([0.0, 0.0, -0.5, 0.0, 0.0, -0.5])
    cal = calibrate_feasibility(hopeless, HAND_LABELS, HAND_SEEN, feas, n_thresholds=3)
    assert cal.thresholds == (-0.5, -0.25, 0.0) and cal.val_auc == (0.0, 0.0, 0.0)
    assert (cal.index, cal.threshold) == (0, -0.5)


def test_calibration_errors():
    scores, labels, seen, _, _, _ = random_case(0, open_world=True)
    with pytest.raises(ValueError, match="shape"):
        calibrate_feasibility(scores, labels, seen, torch.zeros(3))
    feas = torch.zeros(len(seen))
    feas[~seen] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        calibrate_feasibility(scores, labels, seen, feas)
    with pytest.raises(ValueError, match="n_thresholds"):
        calibrate_feasibility(scores, labels, seen, torch.zeros(len(seen)), n_thresholds=0)


# ------------------------------------------------------------------------------------------------
# Feasibility and word vectors
# ------------------------------------------------------------------------------------------------


def tiny_split() -> CZSLSplit:
    train = [("old", "car"), ("old", "dog"), ("red", "car"), ("wet", "dog")]
    val = [("old", "car"), ("red", "dog")]
    test = [("old", "dog"), ("wet", "car")]
    return CZSLSplit(
        root=Path("."),
        split="s",
        attrs=["old", "red", "wet"],
        objs=["car", "dog", "hat"],
        train_pairs=train,
        val_pairs=val,
        test_pairs=test,
        pairs=sorted(set(train + val + test)),
    )


def test_feasibility_hand_case():
    split = tiny_split()
    # Unit vectors so cosine similarities are easy: car.dog = 0.6, car.hat = 0, dog.hat = 0.8;
    # old.red = 0, old.wet = 0.6, red.wet = 0.8.
    objs = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    attrs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    f = feasibility_scores(split, attrs, objs).view(3, 3)  # rows old, red, wet; columns car, dog, hat
    # Seen pairs are 0.
    assert f[0, 0] == 0 and f[0, 1] == 0 and f[1, 0] == 0 and f[2, 1] == 0
    # (red, dog): objects with red in train: car -> cos(dog, car) = 0.6; attributes with dog in
    # train: old, wet -> max(cos(red, old) = 0, cos(red, wet) = 0.8) = 0.8 -> 0.7.
    assert f[1, 1] == pytest.approx(0.7, abs=1e-6)
    # (old, hat): objects with old: car, dog -> max(0, 0.8) = 0.8; no train pair has hat -> -1.
    assert f[0, 2] == pytest.approx(-0.1, abs=1e-6)
    # (wet, car): objects with wet: dog -> 0.6; attributes with car: old, red -> max(0.6, 0.8).
    assert f[2, 0] == pytest.approx(0.7, abs=1e-6)
    # (red, hat): car -> cos(hat, car) = 0; no attribute with hat -> -1 -> -0.5.
    assert f[1, 2] == pytest.approx(-0.5, abs=1e-6)
    # Closed-world columns select the same numbers.
    closed = feasibility_scores(split, attrs, objs, columns=split.pairs)
    assert closed.tolist() == [float(f[split.attr2idx[a], split.obj2idx[o]]) for a, o in split.pairs]
    with pytest.raises(ValueError, match="attr_vectors"):
        feasibility_scores(split, attrs[:2], objs)


def write_glove(path: Path) -> Path:
    path.write_text(
        "old 1 0 0\n"
        "red 0 1 0\n"
        "traffic 1 1 0\n"
        "light 0 1 1\n"
        "fake 2 0 0\n"
        "fur 0 0 2\n"
        "car 0 0 1\n"
        "red 0 2 0\n"  # a later line for the same word wins
    )
    return path


def test_load_glove(tmp_path):
    path = write_glove(tmp_path / "glove.txt")
    wv = load_glove(path, ["Old", "RED", "traffic_light", "car"])
    assert wv.vectors.tolist() == [[1, 0, 0], [0, 2, 0], [0.5, 1, 0.5], [0, 0, 1]]
    assert wv.missing == () and wv.names == ("Old", "RED", "traffic_light", "car")
    aliased = load_glove(path, ["Faux.Fur"], aliases=REFERENCE_GLOVE_ALIASES)
    assert aliased.vectors.tolist() == [[1, 0, 1]]
    with pytest.raises(DataError, match="'blue'"):
        load_glove(path, ["old", "blue_car"])
    zeros = load_glove(path, ["old", "blue_car"], fallback="zeros")
    assert zeros.vectors.tolist() == [[1, 0, 0], [0, 0, 0.5]] and zeros.missing == ("blue",)
    skip = load_glove(path, ["blue_car", "pink"], fallback="skip")
    assert skip.vectors.tolist() == [[0, 0, 1], [0, 0, 0]] and skip.missing == ("blue", "pink")


def test_load_glove_bad_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_glove(tmp_path / "none.txt", ["a"])
    bad = tmp_path / "bad.txt"
    bad.write_text("old 1 0 0\nred 1 0\n")
    with pytest.raises(DataError, match="bad.txt:2"):
        load_glove(bad, ["red"])
    bad.write_text("old 1 0 0\nred 1 x 0\n")
    with pytest.raises(DataError, match="bad.txt:2"):
        load_glove(bad, ["red"])
    with pytest.raises(ValueError, match="fallback"):
        load_glove(bad, ["red"], fallback="guess")  # type: ignore[arg-type]


def test_evaluate_split_builds_masks_and_labels(tmp_path):
    split = tiny_split()
    split.samples = {
        "train": [],
        "val": [],
        "test": [
            czsl_sample("old", "dog"),
            czsl_sample("wet", "car"),
            czsl_sample("old", "car"),
            czsl_sample("wet", "car"),
        ],
    }
    g = torch.Generator().manual_seed(0)
    for world in ("closed", "open"):
        columns = split.columns(world)
        scores = torch.randn(4, len(columns), generator=g)
        got = evaluate_split(scores, split, "test", world)
        attrs, objs = split.pair_parts(columns)
        keep = split.closed_mask("test", columns) if world == "closed" else None
        labels = split.labels("test", columns)
        want = evaluate_czsl(scores, labels, split.seen_mask(columns), attrs, objs, keep_mask=keep)
        assert got == want
        assert as_fields(got) == oracle(scores, labels, split.seen_mask(columns), attrs, objs, keep, 1, torch_topk)
    with pytest.raises(ValueError, match="phase"):
        evaluate_split(scores, split, "train")  # type: ignore[arg-type]


def czsl_sample(attr: str, obj: str):
    from vlprompt.data.czsl import CZSLSample

    return CZSLSample(f"{attr}_{obj}.png", attr, obj)
