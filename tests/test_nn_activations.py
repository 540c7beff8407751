"""Activations: generated forward/backward kernels against torch, finite differences and mpmath (float64).

Tolerances: backward ≤ 1e-10 relative to torch autograd and to 4th-order central
differences; forward and derivative ≤ 1e-12 relative (floor 1) to an mpmath evaluation
of the textbook SymPy form, including x = ±30 and ±700.
"""
import numpy as np
import pytest
import sympy as sp
from conftest import rel_err
from nn_checks import GRAD_RTOL, fd_grad

from symopt import nn
from symopt.derive.mpeval import mp_eval
from symopt.rulebook.nn import activations

ELEMENTWISE = ["sigmoid", "tanh", "relu", "leaky_relu", "softplus", "gelu"]


def _torch_fn(name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    return {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": F.relu, "leaky_relu": F.leaky_relu,
            "softplus": F.softplus, "gelu": F.gelu, "softmax": lambda t: torch.softmax(t, dim=-1)}[name]


def _x(rng, shape=(5, 4)):
    x = rng.normal(size=shape) * 2.5
    x[np.abs(x) < 0.05] = 0.3  # finite differences stay away from the kink at 0
    return x


@pytest.mark.parametrize("name", ELEMENTWISE + ["softmax"])
def test_forward_and_backward_match_torch_and_finite_differences(name, rng):
    torch = pytest.importorskip("torch")
    act = nn.activation(name)
    x = _x(rng)
    g = rng.normal(size=x.shape)
    y = act.forward(x)
    dx = act.backward(x, y, g)
    xt = torch.tensor(x, requires_grad=True)
    yt = _torch_fn(name)(xt)
    yt.backward(torch.tensor(g))
    assert rel_err(y, yt.detach().numpy(), floor=1e-12) <= 1e-13
    assert rel_err(dx, xt.grad.numpy(), floor=1e-12) <= GRAD_RTOL
    assert rel_err(dx, fd_grad(lambda v: float(np.sum(act.forward(v) * g)), x), floor=1.0) <= GRAD_RTOL


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_kernels_match_mpmath_of_the_textbook_form(name):
    spec = activations.ACTIVATIONS[name]()
    act = nn.activation(name)
    d = sp.diff(spec.expr, spec.x).replace(sp.Heaviside, lambda a, *r: sp.Heaviside(a, 0))
    xs = np.array([-700.0, -30.0, -3.3, -1.0, -0.2, 0.0, 1e-9, 0.7, 2.0, 30.0, 700.0])
    y = act.forward(xs)
    dx = act.derivative(xs)
    hyper = {s: h.default for s, h in spec.hyper.items()}
    for xi, yi, di in zip(xs, y, dx):
        at = {spec.x: sp.Float(xi, 60), **hyper}
        y_ref = float(mp_eval(spec.expr, at))
        d_ref = float(mp_eval(d, at))
        assert abs(yi - y_ref) <= 1e-12 * max(abs(y_ref), 1.0), (xi, yi, y_ref)
        assert abs(di - d_ref) <= 1e-12 * max(abs(d_ref), 1.0), (xi, di, d_ref)


def test_derivative_forms_use_the_output_where_cheaper():
    from symopt.codegen.plan_gradients import plan_elementwise

    y = activations.y
    assert plan_elementwise(activations.tanh()).derivative == 1 - y**2
    assert sp.expand(plan_elementwise(activations.sigmoid()).derivative - y * (1 - y)) == 0
    for name in ELEMENTWISE:
        plan = plan_elementwise(activations.ACTIVATIONS[name]())
        assert plan.derivative_ops <= plan.raw_ops, name


def test_subgradient_convention_at_exactly_zero():
    torch = pytest.importorskip("torch")
    x = np.array([0.0, -0.0, 1.0, -1.0])
    np.testing.assert_array_equal(nn.activation("relu").derivative(x), [0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(nn.activation("leaky_relu").derivative(x), [0.01, 0.01, 1.0, 0.01])
    np.testing.assert_array_equal(nn.activation("leaky_relu", negative_slope=0.2).derivative(x),
                                  [0.2, 0.2, 1.0, 0.2])
    for name in ("relu", "leaky_relu"):
        xt = torch.tensor(x, requires_grad=True)
        _torch_fn(name)(xt).sum().backward()
        np.testing.assert_array_equal(nn.activation(name).derivative(x), xt.grad.numpy())


def test_softmax_vjp_comes_out_of_sympy_as_p_times_g_minus_dot():
    d = activations.softmax_derivation()
    s = d["symbols"]
    k, i, K = s["k"], s["i"], s["K"]
    expected = s["p"][k] * (s["g"][k] - sp.Sum(s["g"][i] * s["p"][i], (i, 0, K - 1)))
    assert sp.simplify(d["vjp_p"] - expected) == 0


def test_softmax_is_stable_at_1000():
    act = nn.activation("softmax")
    p = act.forward(np.array([[1000.0, -1000.0, 999.0]]))
    e = np.exp(-1.0)
    np.testing.assert_allclose(p, [[1 / (1 + e), 0.0, e / (1 + e)]], rtol=1e-15, atol=0)
    assert act.forward(np.array([1.0, 2.0])).shape == (2,)


def test_float32_kernels(rng):
    x = rng.normal(size=(4, 5))
    g = rng.normal(size=x.shape)
    for name in ("tanh", "relu"):
        act = nn.activation(name)
        y64, y32 = act.forward(x), act.forward(x.astype(np.float32))
        assert y32.dtype == np.float32 and rel_err(y32, y64, floor=1e-3) <= 1e-6
        d64 = act.backward(x, y64, g)
        d32 = act.backward(x.astype(np.float32), y32, g.astype(np.float32))
        assert rel_err(d32, d64, floor=1e-3) <= 1e-5


def test_bad_inputs():
    act = nn.activation("tanh")
    with pytest.raises(ValueError, match="NaN"):
        act.forward(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="upstream gradient"):
        act.backward(np.zeros(3), np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="Jacobian"):
        nn.activation("softmax").derivative(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        nn.activation("swish")
    with pytest.raises(ValueError, match="negative_slope"):
        nn.activation("leaky_relu", negative_slope=-0.1)
    with pytest.raises(ValueError, match="out must be"):
        act.forward(np.zeros(3), out=np.zeros(4))
