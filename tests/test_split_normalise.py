import numpy as np
import pytest

from pipeline.errors import StageError
from pipeline.params import SplitParams
from pipeline.stages import normalise, split


@pytest.fixture(scope="module")
def parts(mnist):
    train_x, train_y, test_x, test_y = mnist
    return split.split(
        (train_x, train_y),
        (test_x, test_y),
        SplitParams(val_size=10_000, train_limit=None, test_limit=None, seed=0),
    )


def test_official_test_split_kept_and_val_carved_from_train(parts, mnist):
    train_x, _, test_x, _ = mnist
    assert len(parts["train"][1]) == 50_000 and len(parts["val"][1]) == 10_000
    np.testing.assert_array_equal(parts["test"][0], test_x)

    # train and val partition the official 60,000: same multiset of images, no overlap
    def keys(x):
        return {row.tobytes() for row in x.reshape(len(x), -1)}

    assert (
        keys(parts["train"][0]).isdisjoint(keys(parts["val"][0])) or len(keys(train_x)) < 60_000
    )  # MNIST has a few exact duplicates
    assert len(parts["train"][0]) + len(parts["val"][0]) == len(train_x)


def test_validation_is_stratified(parts, mnist):
    _, train_y, _, _ = mnist
    expected = np.bincount(train_y) / len(train_y)
    for name in ("train", "val"):
        got = np.bincount(parts[name][1], minlength=10) / len(parts[name][1])
        assert np.abs(got - expected).max() < 0.001, name


def test_split_is_deterministic_and_seeded(mnist):
    train_x, train_y, test_x, test_y = mnist
    data = ((train_x[:6000], train_y[:6000]), (test_x, test_y))
    a = split.split(*data, SplitParams(val_size=1000, train_limit=None, test_limit=None, seed=3))
    b = split.split(*data, SplitParams(val_size=1000, train_limit=None, test_limit=None, seed=3))
    c = split.split(*data, SplitParams(val_size=1000, train_limit=None, test_limit=None, seed=4))
    np.testing.assert_array_equal(a["val"][0], b["val"][0])
    assert not np.array_equal(a["val"][0], c["val"][0])


def test_train_limit_is_a_stratified_subset(mnist):
    train_x, train_y, test_x, test_y = mnist
    parts = split.split(
        (train_x, train_y),
        (test_x, test_y),
        SplitParams(val_size=10_000, train_limit=3000, test_limit=1000, seed=0),
    )
    assert len(parts["train"][1]) == 3000 and len(parts["test"][1]) == 1000
    assert len(parts["val"][1]) == 10_000
    counts = np.bincount(parts["train"][1], minlength=10)
    assert counts.min() >= 250 and counts.max() <= 350


def test_val_size_too_large_names_key(mnist):
    train_x, train_y, test_x, test_y = mnist
    with pytest.raises(StageError, match=r"split\.val_size"):
        split.split(
            (train_x[:100], train_y[:100]),
            (test_x, test_y),
            SplitParams(val_size=100, train_limit=None, test_limit=None, seed=0),
        )


def test_statistics_come_from_train_only(rng):
    train = rng.integers(0, 128, (50, 28, 28), dtype=np.uint8)
    stats = normalise.statistics(train, standardise=True)
    assert stats["mean"] == pytest.approx(train.mean() / 255)
    assert stats["std"] == pytest.approx(train.std() / 255)
    x = normalise.apply(train, stats)
    assert x.dtype == np.float32 and x.shape == (50, 1, 28, 28)
    assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-4)


def test_mnist_training_statistics(mnist):
    stats = normalise.statistics(mnist[0], standardise=True)
    assert stats["mean"] == pytest.approx(0.1307, abs=1e-4)
    assert stats["std"] == pytest.approx(0.3081, abs=1e-4)


def test_standardise_off_only_divides_by_255(rng):
    images = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    stats = normalise.statistics(images, standardise=False)
    assert stats == {"mean": 0.0, "std": 1.0, "standardise": False}
    np.testing.assert_allclose(normalise.apply(images, stats)[:, 0], images / 255.0, rtol=1e-6)
