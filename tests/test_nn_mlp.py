"""The MLP: backprop through generated kernels equals torch autograd and finite differences
(float64, ≤ 1e-10 relative), trains on the digits, and refuses bad input by name."""
import numpy as np
import pytest
from conftest import rel_err
from nn_checks import GRAD_RTOL, fd_grad

import symopt
from symopt.nn import MLP


def _torch_grads(net, X, y, act, loss):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ps = [torch.tensor(p, requires_grad=True) for p in net.params]
    h = torch.tensor(X)
    fn = {"tanh": torch.tanh, "relu": F.relu, "sigmoid": torch.sigmoid, "gelu": F.gelu,
          "softmax": lambda t: torch.softmax(t, dim=-1)}[act]
    for i in range(0, len(ps), 2):
        h = h @ ps[i] + ps[i + 1]
        if i < len(ps) - 2:
            h = fn(h)
    if loss == "softmax_cross_entropy":
        L = F.cross_entropy(h, torch.tensor(y))
    elif loss == "mse":
        L = F.mse_loss(h, torch.tensor(y))
    else:
        L = F.binary_cross_entropy_with_logits(h, torch.tensor(y))
    L.backward()
    return L.item(), [p.grad.numpy() for p in ps]


@pytest.mark.parametrize("sizes, act, loss", [
    ([64, 32, 10], "tanh", "softmax_cross_entropy"),
    ([6, 5, 4, 3], "relu", "mse"),
    ([5, 4, 1], "softmax", "binary_cross_entropy"),
    ([5, 7, 3], "gelu", "softmax_cross_entropy"),
])
def test_loss_and_grads_equal_torch_autograd(sizes, act, loss, rng):
    net = MLP(sizes, activation=act, loss=loss, seed=3)
    X = rng.normal(size=(9, sizes[0]))
    if loss == "softmax_cross_entropy":
        y = rng.integers(0, sizes[-1], size=9)
    elif loss == "mse":
        y = rng.normal(size=(9, sizes[-1]))
    else:
        y = rng.uniform(size=(9, sizes[-1]))
    value, grads = net.loss_and_grads(X, y)
    ref_value, ref_grads = _torch_grads(net, X, y, act, loss)
    assert abs(value - ref_value) <= GRAD_RTOL * abs(ref_value)
    assert [g.shape for g in grads] == [p.shape for p in net.params]
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r, floor=1e-9) <= GRAD_RTOL


def test_loss_and_grads_equal_finite_differences(rng):
    net = MLP([4, 5, 3], activation="tanh", seed=1)
    X = rng.normal(size=(6, 4))
    y = rng.integers(0, 3, size=6)
    _, grads = net.loss_and_grads(X, y)
    for p, g in zip(net.params, grads):
        def f(v, p=p):
            saved = p.copy()
            p[...] = v
            out = net.loss(X, y)
            p[...] = saved
            return out
        assert rel_err(g, fd_grad(f, p.copy()), floor=1.0) <= GRAD_RTOL


def test_contract_of_the_issue(rng):
    net = symopt.nn.MLP([64, 32, 10], activation="tanh", loss="softmax_cross_entropy", dtype=np.float64, seed=0)
    assert [p.shape for p in net.params] == [(64, 32), (32,), (32, 10), (10,)]
    X = rng.normal(size=(16, 64))
    y = rng.integers(0, 10, size=16)
    loss0, grads = net.loss_and_grads(X, y)
    opt = symopt.optimizer("notes.adam_warmup", net.params, lr=1e-2)
    for _ in range(20):
        _, grads = net.loss_and_grads(X, y)
        opt.step(grads)
    assert net.loss(X, y) < 0.5 * loss0
    assert net.forward(X).shape == (16, 10)
    # Same seed, same weights.
    again = MLP([64, 32, 10], seed=0)
    np.testing.assert_array_equal(again.params[0], MLP([64, 32, 10], seed=0).params[0])


def test_trains_on_digits_to_a_real_accuracy():
    from symopt.nn import load_digits
    from symopt.nn.train import train_model

    X, y, Xt, yt = load_digits(seed=0)
    assert X.shape == (1347, 64) and Xt.shape == (450, 64)
    net = MLP([64, 64, 10], activation="tanh", seed=0)
    h = train_model(net, "notes.adam_warmup", X, y, Xt, yt, epochs=4, batch_size=32, lr=2e-3, seed=0)
    assert h.steps == 4 * 43
    assert h.test_accuracy[-1] >= 0.93, h.test_accuracy
    assert h.loss[-1] < 0.25 * h.loss[0]
    # Full-batch gradient descent (the notes' GD): one step per epoch, each on all 1347 samples.
    # An epoch records the loss its step saw (before the update), so loss[1] is the initial loss.
    net = MLP([64, 16, 10], activation="tanh", seed=0)
    h = train_model(net, "notes.gd", X, y, epochs=5, batch_size=None, lr=0.5)
    assert h.batch_size == 1347 and h.steps == 5
    assert h.loss[1] == pytest.approx(h.loss[0], rel=1e-12)
    assert all(a > b for a, b in zip(h.loss[1:], h.loss[2:]))
    assert net.loss(X, y) < h.loss[-1]


def test_float32_network_matches_float64(rng):
    X = rng.normal(size=(8, 6))
    y = rng.integers(0, 3, size=8)
    n64 = MLP([6, 5, 3], seed=2)
    n32 = MLP([6, 5, 3], seed=2, dtype=np.float32)
    v64, g64 = n64.loss_and_grads(X, y)
    v32, g32 = n32.loss_and_grads(X, y)
    assert all(g.dtype == np.float32 for g in g32)
    assert abs(v32 - v64) <= 1e-5 * abs(v64)
    for a, b in zip(g32, g64):
        assert rel_err(a, b, floor=1e-2) <= 1e-4


@pytest.mark.parametrize("X, y, exc, match", [
    (np.zeros((3, 5)), np.zeros(3, dtype=int), ValueError, r"X must have shape \(batch, 4\)"),
    (np.full((3, 4), np.nan), np.zeros(3, dtype=int), ValueError, "X contains nan"),
    (np.zeros((3, 4)), np.array([0, 1, 3]), ValueError, "label 3, outside the 3 classes"),
    (np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]), TypeError, "integer class labels"),
    (np.zeros((3, 4)), np.zeros(2, dtype=int), ValueError, r"shape \(3,\)"),
    (np.zeros((0, 4)), np.zeros(0, dtype=int), ValueError, "empty batch"),
])
def test_bad_input_raises_naming_the_problem(X, y, exc, match):
    net = MLP([4, 3, 3], seed=0)
    with pytest.raises(exc, match=match):
        net.loss_and_grads(X, y)


def test_bad_construction():
    with pytest.raises(ValueError, match="at least an input and an output"):
        MLP([4])
    with pytest.raises(ValueError, match=r"sizes\[1\] must be a positive integer"):
        MLP([4, 0, 2])
    with pytest.raises(ValueError, match="unknown activation"):
        MLP([4, 2], activation="swish")
    with pytest.raises(ValueError, match="unknown loss"):
        MLP([4, 2], loss="kl")
    with pytest.raises(TypeError, match="float32 or float64"):
        MLP([4, 2], dtype=np.int32)
    with pytest.raises(ValueError, match="shape of the prediction"):
        MLP([4, 2], loss="mse").loss_and_grads(np.zeros((3, 4)), np.zeros((3, 3)))
