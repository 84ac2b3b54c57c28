import numpy as np
import pytest
import torch

from pipeline import export, inference, models, training
from pipeline.params import TrainParams, load_section
from tests.conftest import ROOT

PARAMS = load_section(ROOT / "params.yaml", "train", TrainParams)
CANDIDATES = PARAMS.candidates

EXPECTED_PARAMETERS = {
    "mlp_tanh16": 784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10,  # R1: 13,002
    "cnn_r2": 28 * 9 + 28 + 4732 * 128 + 128 + 128 * 10 + 10,  # R2: 607,394
    "mlp_wide_softmax": 784 * 784 + 784 + 784 * 10 + 10,  # R3: 623,290
    "mlp128": 101_770,  # R4, as published
    "mlp_sigmoid": 784 * 30 + 30 + 30 * 10 + 10,  # R5 (hidden 30): 23,860
    "logreg": 784 * 10 + 10,
}


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_output_shape_and_parameter_count(name):
    net = models.build(CANDIDATES[name])
    out = net(torch.zeros(3, 1, 28, 28))
    assert out.shape == (3, 10)
    if name in EXPECTED_PARAMETERS:
        assert models.parameter_count(net) == EXPECTED_PARAMETERS[name]


def test_cnn_widths_come_from_params():
    c = CANDIDATES["cnn_compact"].model_copy(update={"channels": [8, 16, 24]})
    net = models.build(c)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    batch_norms = 2 * (8 + 16 + 24)  # a weight and a bias per channel
    convs = 1 * 8 * 5 * 5 + 8 * 16 * 3 * 3 + 16 * 24 * 3 * 3  # no biases: batch norm follows
    head = 24 * 4 * 4 * 128 + 128 + 128 * 10 + 10  # (B, 24, 4, 4) -> 128 -> 10
    assert models.parameter_count(net) == batch_norms + convs + head


@pytest.mark.parametrize("first_layer", ["pool", "stride"])
def test_first_layer_reaches_14x14_either_way(first_layer):
    c = CANDIDATES["cnn_compact"].model_copy(update={"first_layer": first_layer})
    net = models.build(c)
    conv = net[0]
    maps = conv(torch.zeros(2, 1, 28, 28))
    pooled = net[1](maps) if first_layer == "pool" else maps
    w1 = c.channels[0]
    assert maps.shape == ((2, w1, 28, 28) if first_layer == "pool" else (2, w1, 14, 14))
    assert pooled.shape == (2, w1, 14, 14)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # The same weights either way: only where the 5x5 filter is applied changes.
    pool_net = models.build(c.model_copy(update={"first_layer": "pool"}))
    assert models.parameter_count(net) == models.parameter_count(pool_net)


def test_ensemble_averages_its_members_probabilities():
    c = CANDIDATES["cnn_ensemble"]
    assert c.members == 2
    torch.manual_seed(0)
    net = models.build(c).eval()
    single = models.build(c.model_copy(update={"members": 1}))
    assert models.parameter_count(net) == 2 * models.parameter_count(single)
    assert models.multiply_adds(net) == 2 * models.multiply_adds(single)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        a, b = (torch.softmax(member(x), dim=1) for member in models.members(net))
        assert not torch.allclose(a, b), "members start from the same weights"
        torch.testing.assert_close(torch.softmax(net(x), dim=1), (a + b) / 2)


def test_multiply_adds_of_a_known_network():
    c = CANDIDATES["cnn_ensemble"].model_copy(update={"members": 1, "channels": [8, 16, 24]})
    convs = 8 * 14 * 14 * 25 + 16 * 14 * 14 * 8 * 9 + 24 * 7 * 7 * 16 * 9  # stride-2 first
    head = 24 * 4 * 4 * 128 + 128 * 10
    assert models.multiply_adds(models.build(c)) == convs + head
    assert models.multiply_adds(models.build(CANDIDATES["mlp128"])) == 784 * 128 + 128 * 10


@pytest.fixture(scope="module")
def small_data(mnist):
    """2,000 training and 1,000 validation digits, divided by 255."""
    train_x, train_y, _, _ = mnist

    def tensors(x, y):
        return torch.from_numpy(x).float().unsqueeze(1) / 255, torch.from_numpy(y).long()

    return training.Data(
        *tensors(train_x[:2000], train_y[:2000]), *tensors(train_x[-1000:], train_y[-1000:])
    )


def quick(name):
    """The candidate's own settings, shortened to one epoch on small batches."""
    c = CANDIDATES[name]
    if not c.is_torch:
        return c.model_copy(update={"max_iter": 50})
    return c.model_copy(update={"epochs": 1, "batch_size": min(c.batch_size, 32)})


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_short_training_beats_chance_by_far(name, small_data):
    torch.manual_seed(0)
    c = quick(name)
    if c.arch == "logreg":
        _, _, net = training.train_logreg(c, small_data, seed=0)
    else:
        net = models.build(c)
        history = training.train_torch(net, c, small_data, seed=0)
        assert len(history.epochs) == 1 and len(history.steps) == -(-2000 // c.batch_size)
    _, correct = training.evaluate_logits(net, small_data.x_val, small_data.y_val)
    assert correct / 1000 > 0.6, f"{name}: {correct} of 1000 right after one short epoch"


def trained_weights(seed, small_data):
    torch.manual_seed(seed)
    c = quick("cnn_fast").model_copy(update={"augment": CANDIDATES["cnn_ensemble"].augment})
    net = models.build(c)
    training.train_torch(
        net,
        c,
        training.Data(
            small_data.x_train[:500],
            small_data.y_train[:500],
            small_data.x_val[:100],
            small_data.y_val[:100],
        ),
        seed,
    )
    return net.state_dict()


def test_same_seed_same_weights_other_seed_other_weights(small_data):
    a, b, c = (trained_weights(s, small_data) for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_micro_batches_make_the_same_updates(small_data):
    """Parts of a batch, weighted by size, give the whole batch's step (up to rounding)."""
    data = training.Data(
        small_data.x_train[:1000],
        small_data.y_train[:1000],
        small_data.x_val[:100],
        small_data.y_val[:100],
    )
    c = quick("cnn_r2").model_copy(update={"batch_size": 250})
    weights, losses = [], []
    for micro_batch in (None, 100):  # 100: parts of 100, 100 and 50 images
        torch.manual_seed(0)
        net = models.build(c)
        history = training.train_torch(
            net, c.model_copy(update={"micro_batch": micro_batch}), data, seed=0
        )
        weights.append(net.state_dict())
        losses.append(history.steps)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    for key in weights[0]:
        # Adam divides by sqrt(v): rounding in a near-zero gradient shows up to ~1e-5.
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-3, atol=1e-4)
    torch.manual_seed(0)
    initial = models.build(c).state_dict()["0.weight"]
    assert not torch.equal(weights[0]["0.weight"], initial), "training did not move the weights"


def test_predictor_bakes_in_standardisation_and_tta():
    torch.manual_seed(0)
    net = models.build(CANDIDATES["cnn_fast"]).eval()
    pixels = torch.rand(4, 1, 28, 28)
    plain = inference.Predictor(net, 0.13, 0.31).eval()
    probs = plain(pixels)
    expected = torch.softmax(net((pixels - 0.13) / 0.31), 1)
    torch.testing.assert_close(probs, expected)
    tta = inference.Predictor(net, 0.13, 0.31, tta=4).eval()(pixels)
    torch.testing.assert_close(tta.sum(1), torch.ones(4))
    assert not torch.allclose(tta, probs)


def test_logreg_linear_layer_equals_sklearn(small_data):
    clf, history, net = training.train_logreg(quick("logreg"), small_data, seed=0)
    assert (
        history.epochs[0]["val_correct"]
        == training.evaluate_logits(net, small_data.x_val, small_data.y_val)[1]
    )
    x = small_data.x_val[:50]
    ours = torch.softmax(net(x), 1).detach().numpy()
    np.testing.assert_allclose(ours, clf.predict_proba(x.flatten(1).numpy()), atol=1e-5)


def test_glorot_init_is_keras_default_and_seeded():
    c = CANDIDATES["mlp128"].model_copy(update={"init": "glorot"})
    torch_default = c.model_copy(update={"init": "torch"})
    torch.manual_seed(0)
    net = models.build(c)
    first = net[1]  # Linear(784, 128)
    bound = (6 / (784 + 128)) ** 0.5  # Glorot-uniform's limit
    assert torch.count_nonzero(first.bias) == 0
    assert first.weight.abs().max() <= bound
    assert first.weight.abs().max() > 0.95 * bound  # uniform over the whole range
    torch.manual_seed(0)
    assert torch.equal(models.build(c)[1].weight, first.weight)
    torch.manual_seed(0)
    other = models.build(torch_default)[1]
    assert not torch.equal(other.weight, first.weight) and torch.count_nonzero(other.bias) > 0


def test_an_ensemble_exports_to_onnx_with_the_same_probabilities():
    torch.manual_seed(0)
    predictor = inference.Predictor(models.build(CANDIDATES["cnn_ensemble"]), 0.13, 0.31).eval()
    pixels = torch.rand(64, 1, 28, 28)
    exported = export.export_onnx(predictor)
    check = export.check_onnx(exported, predictor, pixels)
    assert check["label_disagreements"] == 0 and check["max_probability_diff"] < 1e-5
    # Nothing of where this checkout lies: the same network gives the same bytes in any clone.
    assert str(ROOT).encode() not in exported and b"stack_trace" not in exported


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Euclidean distance between two state dicts' floating-point tensors."""
    return sum(float(((a[k] - b[k]) ** 2).sum()) for k in a if a[k].is_floating_point()) ** 0.5


def test_members_with_their_own_data_train_as_if_alone(small_data):
    """member_data "own": member k draws its order and jitter from seed + k, so member 0
    follows the path of a network trained alone from its initial weights (Adam ignores
    the ensemble's 1/2 on each member's loss, up to its epsilon)."""
    data = training.Data(
        small_data.x_train[:500],
        small_data.y_train[:500],
        small_data.x_val[:100],
        small_data.y_val[:100],
    )
    c = quick("cnn_fast").model_copy(
        update={"augment": CANDIDATES["cnn_compact"].augment, "members": 2, "member_data": "own"}
    )
    torch.manual_seed(0)
    ensemble = models.build(c)
    first = {k: v.clone() for k, v in models.members(ensemble)[0].state_dict().items()}
    training.train_torch(ensemble, c, data, seed=0)
    alone = models.build(c.model_copy(update={"members": 1, "member_data": "shared"}))
    alone.load_state_dict(first)
    training.train_torch(alone, c.model_copy(update={"members": 1}), data, seed=0)
    member = models.members(ensemble)[0].state_dict()
    # Not bit for bit: the ensemble's convolutions run both members at once, which can
    # round differently (on one thread, say), and Adam's steps amplify it. Member 0 must
    # still end far nearer the lone network than either moved from their start.
    apart = distance(member, alone.state_dict())
    moved = distance(alone.state_dict(), first)
    assert apart < 0.01 * moved, f"member 0 ended {apart:.3g} from the lone network"
    shared = c.model_copy(update={"member_data": "shared"})
    torch.manual_seed(0)
    together = models.build(shared)
    training.train_torch(together, shared, data, seed=0)
    other = models.members(together)[1].state_dict()["0.weight"]
    assert not torch.allclose(models.members(ensemble)[1].state_dict()["0.weight"], other)
