"""linear-probe's solver "sklearn" (CoOp's linear-probe baseline, KaiyangZhou/CoOp@ff61507:lpclip/linear_probe.py)
against scikit-learn fitted by hand and a hand-written copy of the release's search of C; its bad inputs, its prompt
file, and a run through ``vlprompt train`` / ``eval`` on the tiny model. The default solver is unchanged."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")  # the extra vlprompt[sklearn] (in vlprompt[dev])
from sklearn.linear_model import LogisticRegression  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402  (installed with scikit-learn)

from vlprompt.cli import main  # noqa: E402
from vlprompt.data import image_folder, split_json  # noqa: E402
from vlprompt.engine import FeatureCache, TrainConfig, fit  # noqa: E402
from vlprompt.errors import DataError, OptionError  # noqa: E402
from vlprompt.labels import ClassNames  # noqa: E402
from vlprompt.methods import Batch, LinearProbe, build_method  # noqa: E402
from vlprompt.methods.base import MethodInputError  # noqa: E402
from vlprompt.methods.linear_probe import C_GRID  # noqa: E402
from vlprompt.prompts import load_prompt, save_pretrained  # noqa: E402

CLASSES = ClassNames(("blue_square", "gold", "green_square", "red_square"))
SKLEARN = {"solver": "sklearn"}


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Each fit is tiny: BLAS threads on shared busy cores only make it slower."""
    with threadpool_limits(1):
        yield


# ------------------------------------------------------------------------------------------- by hand
def by_hand(features, labels, c):
    """The release's classifier, written out: L-BFGS logistic regression, 1000 iterations, inverse L2 strength c."""
    return LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(features, labels)


def release_search(train, val, steps=8):
    """The release's search of C, re-written from its description: (C, index of the sweep's best, moves)."""
    sweep = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]

    def accuracy(c):
        return float(np.mean(by_hand(*train, c).predict(val[0]) == val[1]))

    accuracies = [accuracy(c) for c in sweep]
    best = int(np.argmax(accuracies))
    low, high = 1e-1 * sweep[best], 1e1 * sweep[best]
    moves, kept = "", None
    for _ in range(steps):
        if accuracy(low) < accuracy(high):  # only a strictly better high end moves up
            kept, moves = high, moves + "R"
            low, high = 10 ** np.float64(0.5 * (np.log10(high) + np.log10(low))), 10 ** np.log10(high)
        else:
            kept, moves = low, moves + "L"
            low, high = 10 ** np.log10(low), 10 ** np.float64(0.5 * (np.log10(high) + np.log10(low)))
    return kept, best, moves


class Arrays:
    """Features and labels standing in for a dataset's images: setup and tune read them through :class:`ArrayCache`."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features, self.labels = torch.from_numpy(features), [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def with_transform(self, transform):
        return self


class ArrayCache:
    def features(self, backbone, data, progress=True):
        return data.features


def gaussian_classes(seed=6, classes=4, dim=32, shots=3, val_per_class=10):
    """Class means with anisotropic noise: float32 features, so that the method and the hand fit see the same."""
    rng = np.random.default_rng(seed)
    means, spread = rng.normal(size=(classes, dim)), np.abs(rng.normal(size=dim) * 3)

    def draw(n):
        labels = np.arange(n) % classes
        return (means[labels] + rng.normal(size=(n, dim)) * spread).astype(np.float32), labels

    return draw(classes * shots), draw(classes * val_per_class)


def fitted_probe(backbone, train, val, classes=CLASSES, **options):
    method = build_method("linear-probe", backbone, classes, {**SKLEARN, **options})
    method.setup(backbone, Arrays(*train), ArrayCache())
    method.tune(backbone, Arrays(*val), ArrayCache())
    return method


# ------------------------------------------------------------------------------------------- the search
def test_the_search_picks_what_the_release_picks(vit_backbone):
    train, val = gaussian_classes()
    as64 = lambda split: (split[0].astype(np.float64), split[1])  # noqa: E731
    expected, best, moves = release_search(as64(train), as64(val))
    # a case that exercises the search: the sweep's best is inside the grid and the steps go both ways
    assert best not in (0, len(C_GRID) - 1) and "L" in moves and "R" in moves and expected not in C_GRID
    method = fitted_probe(vit_backbone, train, val, classes=ClassNames(("a", "b", "c", "d")))
    assert method.C.item() == expected  # exactly: the same fits, the same arithmetic
    hand = by_hand(*as64(train), expected)
    torch.testing.assert_close(method.head.weight, torch.from_numpy(hand.coef_).float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(method.head.bias, torch.from_numpy(hand.intercept_).float(), atol=1e-6, rtol=1e-6)


def test_fewer_steps_and_another_sweep(vit_backbone):
    train, val = gaussian_classes()
    method = fitted_probe(vit_backbone, train, val, classes=ClassNames(("a", "b", "c", "d")), search_steps=1,
                          c_grid=[1e-2])  # fmt: skip
    # one step around the only sweep value 1e-2: the ends 1e-3 and 1e-1, the better (a tie: 1e-3) kept
    low, high = 1e-1 * 1e-2, 1e1 * 1e-2
    right = lambda c: int((by_hand(train[0].astype(np.float64), train[1], c).predict(val[0]) == val[1]).sum())  # noqa: E731
    assert method.C.item() == (high if right(low) < right(high) else low)


# ------------------------------------------------------------------------------------------- W and b
@pytest.fixture()
def splits(image_root, split_file, vit_backbone):
    """The fixture split file: per class images 0-3 train, 4 val, 5 test (the evaluation transform)."""
    return {s: split_json(split_file, image_root, s, vit_backbone.image_transform()) for s in ("train", "val", "test")}


def raw_features(backbone, data):
    return FeatureCache().features(backbone, data, progress=False).double().numpy()


def test_w_and_b_are_sklearns_fit_with_the_chosen_c(vit_backbone, splits):
    method = LinearProbe(vit_backbone, CLASSES, LinearProbe.Config(**SKLEARN))
    cache = FeatureCache()
    method.setup(vit_backbone, splits["train"], cache)
    method.tune(vit_backbone, splits["val"], cache)
    train = (raw_features(vit_backbone, splits["train"]), np.array(splits["train"].labels))
    val = (raw_features(vit_backbone, splits["val"]), np.array(splits["val"].labels))
    c = method.C.item()
    assert c == release_search(train, val)[0]
    hand = by_hand(*train, c)  # the raw (unnormalised) features, as the release's
    torch.testing.assert_close(method.head.weight.double(), torch.from_numpy(hand.coef_), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(method.head.bias.double(), torch.from_numpy(hand.intercept_), atol=1e-6, rtol=1e-6)
    test = raw_features(vit_backbone, splits["test"])
    with torch.no_grad():
        logits = method.logits(vit_backbone, Batch(features=torch.from_numpy(test).float()))
    torch.testing.assert_close(logits.double(), torch.from_numpy(hand.decision_function(test)), atol=1e-4, rtol=1e-5)
    assert logits.argmax(-1).tolist() == hand.predict(test).tolist()


def test_two_classes_keep_sklearns_one_row_as_two(vit_backbone):
    train, val = gaussian_classes(seed=3, classes=2)
    method = fitted_probe(vit_backbone, train, val, classes=ClassNames(("cat", "dog")))
    hand = by_hand(train[0].astype(np.float64), train[1], method.C.item())
    assert hand.coef_.shape == (1, 32)
    torch.testing.assert_close(method.head.weight[0], torch.zeros(32))
    torch.testing.assert_close(method.head.weight[1], torch.from_numpy(hand.coef_[0]).float(), atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        probs = method.logits(vit_backbone, Batch(features=torch.from_numpy(val[0]))).softmax(-1)
    torch.testing.assert_close(probs.double(), torch.from_numpy(hand.predict_proba(val[0].astype(np.float64))),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_a_set_c_fits_at_setup_and_searches_nothing(vit_backbone):
    train, val = gaussian_classes()
    method = build_method("linear-probe", vit_backbone, ClassNames(("a", "b", "c", "d")), {**SKLEARN, "C": 0.316})
    method.setup(vit_backbone, Arrays(*train), ArrayCache())
    hand = by_hand(train[0].astype(np.float64), train[1], 0.316)
    torch.testing.assert_close(method.head.weight, torch.from_numpy(hand.coef_).float(), atol=1e-6, rtol=1e-6)
    before = method.head.weight.clone()
    method.tune(vit_backbone, Arrays(*val), ArrayCache())
    assert method.C.item() == 0.316 and torch.equal(method.head.weight, before)


# ------------------------------------------------------------------------------------------- what it declares
def test_it_learns_nothing_and_the_default_is_unchanged(vit_backbone, image_root):
    default = build_method("linear-probe", vit_backbone, CLASSES)
    assert default.config.solver == "engine" and default.learns and not default.sets_up
    assert LinearProbe.capabilities() == {**LinearProbe.capabilities(), "learns": True, "sets_up": False}
    assert set(default.trainable_state()) == {"head.weight", "head.bias"}  # its prompt files hold what they held
    assert LinearProbe.default_preset({}) == "linear-probe"
    method = build_method("linear-probe", vit_backbone, CLASSES, SKLEARN)
    flags = LinearProbe.capabilities(LinearProbe.Config(**SKLEARN))
    assert not flags["learns"] and flags["sets_up"] and not method.learns and method.sets_up
    assert not [p for p in method.parameters() if p.requires_grad]
    assert LinearProbe.default_preset(SKLEARN) == "linear-probe-lpclip"
    assert LinearProbe.recipes["lpclip"].options == SKLEARN
    data = image_folder(image_root, vit_backbone.image_transform())
    with pytest.raises(ValueError, match="nothing to train"):
        fit(method, vit_backbone, data, TrainConfig(epochs=1), cache=FeatureCache(), progress=False)


# ------------------------------------------------------------------------------------------- bad input
def test_without_a_validation_split_it_says_so(vit_backbone, splits):
    method = LinearProbe(vit_backbone, CLASSES, LinearProbe.Config(**SKLEARN))
    method.setup(vit_backbone, splits["train"], FeatureCache())  # and no tune: the run loop's case without val
    features = torch.zeros(2, vit_backbone.embed_dim)
    with pytest.raises(MethodInputError, match=r"not fitted: .*this run has none .*or set option C"):
        method.logits(vit_backbone, Batch(features=features))
    with pytest.raises(DataError, match="validation split, and it is empty"):
        method.tune(vit_backbone, splits["val"].subset([]), FeatureCache())
    fresh = LinearProbe(vit_backbone, CLASSES, LinearProbe.Config(**SKLEARN))
    with pytest.raises(MethodInputError, match="set it up first"):
        fresh.tune(vit_backbone, splits["val"], FeatureCache())


def test_vlprompt_train_without_a_validation_split_fails_clearly(image_root, tmp_path, capsys):
    data = ["--data.format", "imagefolder", "--data.train_dir", str(image_root), "--data.test_dir", str(image_root)]
    args = ["train", "--backbone.name", "tiny-random-vit", *data, "--data.shots", "2", "--method", "linear-probe"]
    assert main([*args, "--method_options", json.dumps(SKLEARN), "--seeds", "[1]", "--out", str(tmp_path / "r")]) == 2
    assert "is not fitted" in capsys.readouterr().err


def test_bad_options_a_missing_class_and_a_missing_extra(vit_backbone, splits, monkeypatch):
    for options, message in [
        ({"C": 0.0}, "option C must be a number > 0"),
        ({"c_grid": []}, "c_grid must be a non-empty list"),
        ({"c_grid": [1.0, -1.0]}, "c_grid must be a non-empty list of numbers > 0"),
        ({"search_steps": 0}, "search_steps must be >= 1"),
        ({"init": "zeroshot"}, "init 'zeroshot' is for solver 'engine'"),
        ({"solver": "lbfgs"}, "solver must be one of"),
    ]:
        with pytest.raises(OptionError, match=message):
            build_method("linear-probe", vit_backbone, CLASSES, {**SKLEARN, **options})
    method = LinearProbe(vit_backbone, CLASSES, LinearProbe.Config(**SKLEARN))
    no_gold = splits["train"].subset([i for i, label in enumerate(splits["train"].labels) if label != 1])
    with pytest.raises(DataError, match=r"class\(es\) \['gold'\] have none"):
        method.setup(vit_backbone, no_gold, FeatureCache())
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)  # as without scikit-learn
    with pytest.raises(OptionError, match=r"pip install 'vlprompt\[sklearn\]'"):
        method.setup(vit_backbone, splits["train"], FeatureCache())


# ------------------------------------------------------------------------------------------- files
def test_the_fit_round_trips_through_the_prompt_file_without_sklearn(vit_backbone, splits, tmp_path, monkeypatch):
    method = LinearProbe(vit_backbone, CLASSES, LinearProbe.Config(**SKLEARN))
    method.setup(vit_backbone, splits["train"], FeatureCache())
    method.tune(vit_backbone, splits["val"], FeatureCache())
    features = FeatureCache().features(vit_backbone, splits["test"], progress=False)
    with torch.no_grad():
        logits = method.logits(vit_backbone, Batch(features=features))
    save_pretrained(method, vit_backbone, tmp_path / "prompt")
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)  # predicting needs no scikit-learn
    loaded = load_prompt(tmp_path / "prompt", vit_backbone)
    assert isinstance(loaded, LinearProbe) and loaded.config.solver == "sklearn" and not loaded.learns
    for name in ("head.weight", "head.bias", "C"):
        assert torch.equal(loaded.state_dict()[name], method.state_dict()[name]), name
    assert loaded.C.dtype == torch.float64 and loaded.C.item() == method.C.item()
    with torch.no_grad():
        assert torch.equal(loaded.logits(vit_backbone, Batch(features=features)), logits)


def test_vlprompt_train_then_eval(image_root, split_file, tmp_path, capsys, monkeypatch):
    tuned, fitted = [], []
    original = LinearProbe.tune
    monkeypatch.setattr(LinearProbe, "tune", lambda self, b, val, c: tuned.append(val) or original(self, b, val, c))
    monkeypatch.setattr("vlprompt.runs.loop.fit", lambda *a, **k: fitted.append(1))
    data = ["--data.root", str(image_root), "--data.split_file", str(split_file), "--data.shots", "4"]
    args = ["train", "--backbone.name", "tiny-random-vit", *data, "--method", "linear-probe", "--seeds", "[1]"]
    out = tmp_path / "run"
    assert main([*args, "--method_options", json.dumps(SKLEARN), "--out", str(out)]) == 0
    assert not fitted  # the engine trained nothing
    assert [s.path.split("/")[-1] for s in tuned[0].samples] == ["4.png"] * 4  # C searched on val, never on test
    trained = json.loads((out / "results.json").read_text())["per_seed"][0]["accuracy"]
    capsys.readouterr()
    assert main(["eval", "--prompt", str(out / "seed1" / "prompt"), *data]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(trained)
