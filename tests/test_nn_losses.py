"""Losses: generated kernels against torch autograd, finite differences and mpmath (float64).

Tolerances: gradients ≤ 1e-10 relative to torch and to 4th-order central differences;
kernel values ≤ 1e-12 relative to an mpmath evaluation (1100 digits) of the textbook
SymPy form; float32 kernels ≤ 1e-5 relative to float64; the planned softmax cross-entropy
steps, evaluated one by one, ≤ 1e-12 relative (max-norm for the gradient) to NumPy.
"""
import math

import mpmath
import numpy as np
import pytest
import sympy as sp
from conftest import rel_err
from nn_checks import GRAD_RTOL, fd_grad

from symopt import nn
from symopt.codegen.plan_gradients import SCALE, plan_rowwise
from symopt.derive.mpeval import mp_eval
from symopt.rulebook.nn import losses

ELEMENTWISE = ["mse", "mae", "huber", "binary_cross_entropy", "hinge"]


def _data(name, rng, shape=(6, 3)):
    z = rng.normal(size=shape) * 2.0
    if name == "binary_cross_entropy":
        y = rng.uniform(0, 1, size=shape)
    elif name == "hinge":
        y = rng.choice([-1.0, 1.0], size=shape)
    else:
        y = rng.normal(size=shape)
    # Keep finite differences away from kinks (|z − y| = 0, δ; y z = 1).
    if name in ("mae", "huber"):
        r = z - y
        for k in (0.0, 1.0, -1.0):
            close = np.abs(r - k) < 0.05
            z[close] += 0.2
    if name == "hinge":
        close = np.abs(y * z - 1) < 0.05
        z[close] += 0.2 * y[close]
    return z, y


def _torch_loss(name, zt, yt):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    if name == "mse":
        return F.mse_loss(zt, yt)
    if name == "mae":
        return F.l1_loss(zt, yt)
    if name == "huber":
        return F.huber_loss(zt, yt, delta=1.0)
    if name == "binary_cross_entropy":
        return F.binary_cross_entropy_with_logits(zt, yt)
    if name == "hinge":
        return torch.relu(1 - yt * zt).mean()
    if name == "softmax_cross_entropy":
        return F.cross_entropy(zt, yt)
    raise KeyError(name)


@pytest.mark.parametrize("name", ELEMENTWISE + ["softmax_cross_entropy"])
def test_value_and_grad_match_torch_and_finite_differences(name, rng):
    torch = pytest.importorskip("torch")
    loss = nn.loss(name)
    if name == "softmax_cross_entropy":
        z = rng.normal(size=(7, 5)) * 3
        y = rng.integers(0, 5, size=7)
        yt = torch.tensor(y)
    else:
        z, y = _data(name, rng)
        yt = torch.tensor(y)
    value, grad = loss.value_and_grad(z, y)
    zt = torch.tensor(z, requires_grad=True)
    ref = _torch_loss(name, zt, yt)
    ref.backward()
    assert abs(value - ref.item()) <= GRAD_RTOL * abs(ref.item())
    assert rel_err(grad, zt.grad.numpy(), floor=1e-12) <= GRAD_RTOL
    assert rel_err(grad, fd_grad(lambda v: loss.value(v, y), z), floor=1.0) <= GRAD_RTOL
    assert loss.value(z, y) == pytest.approx(value, rel=1e-14)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_kernels_match_mpmath_of_the_textbook_form(name, rng):
    spec = losses.LOSSES[name]()
    loss = nn.loss(name)
    dref = sp.diff(spec.expr, spec.x).replace(sp.Heaviside, lambda a, *r: sp.Heaviside(a, 0))
    zs = np.concatenate([rng.normal(size=6) * 3, [30.0, -30.0, 700.0, -700.0]])
    if name == "binary_cross_entropy":
        ys = rng.uniform(0, 1, size=zs.size)
    elif name == "hinge":
        ys = rng.choice([-1.0, 1.0], size=zs.size)
    else:
        ys = rng.normal(size=zs.size)
    hyper = {s: h.default for s, h in spec.hyper.items()}
    for z, y in zip(zs, ys):
        at = {spec.x: sp.Float(z, 60), spec.target: sp.Float(y, 60), **hyper}
        v_ref = float(mp_eval(spec.expr, at))
        d_ref = float(mp_eval(dref, at))
        v, g = loss.value_and_grad(np.array([z]), np.array([y]))
        assert abs(v - v_ref) <= 1e-12 * max(abs(v_ref), 1.0), (z, y, v, v_ref)
        assert abs(g[0] - d_ref) <= 1e-12 * max(abs(d_ref), 1.0), (z, y, g[0], d_ref)


def test_softmax_cross_entropy_gradient_comes_out_of_sympy_as_p_minus_y():
    d = losses.softmax_cross_entropy_derivation()
    s = d["symbols"]
    k = s["k"]
    assert sp.simplify(d["gradient_p"] - (s["p"][k] - s["y"][k])) == 0
    # The raw derivative is exp(z_k)/Σ_j exp(z_j) − y_k, the stable one exp(z_k − m)/S − y_k.
    assert sp.simplify(d["gradient"] - (sp.exp(s["z"][k]) / s["total"] - s["y"][k])) == 0
    assert d["gradient_stable"] == sp.exp(s["z"][k] - s["m"]) / s["S"] - s["y"][k]


def _run_row_kernel(kernel, spec, z, label, scale):
    """Evaluate a planned row kernel's steps on one row in float64: ``(row value, element outputs)``."""
    env = {spec.picked: z[label], SCALE: scale}
    for step in kernel.steps:
        if step[0] == "reduce":
            _, sym, op, e = step
            vals = [float(e.xreplace({**env, spec.element: zj, spec.onehot: float(j == label)}))
                    for j, zj in enumerate(z)]
            env[sym] = max(vals) if op == "max" else math.fsum(vals)
        elif step[0] == "row":
            assert not step[2].free_symbols & {spec.element, spec.onehot}   # hoisted: row-only
            env[step[1]] = float(step[2].xreplace(env))
    _, temps, out = kernel.steps[-1]
    outputs = []
    for j, zj in enumerate(z):
        local = {**env, spec.element: zj, spec.onehot: float(j == label)}
        for sym, e in temps:
            local[sym] = e.xreplace(local)
        outputs.append(float(out.xreplace(local)))
    return float(kernel.value.xreplace(env)), np.array(outputs)


def test_softmax_cross_entropy_plan_runs_reductions_then_row_temporaries_then_elements(rng):
    spec = losses.softmax_cross_entropy()
    plan = plan_rowwise(spec)
    assert list(plan.kernels) == ["value", "value_and_grad"]
    assert not plan.kernels["value"].scaled and plan.kernels["value_and_grad"].scaled
    kernel = plan.kernels["value_and_grad"]
    kinds = [step[0] for step in kernel.steps]
    assert kinds == sorted(kinds, key=["reduce", "row", "elements"].index) and kinds[-1] == "elements"
    z = rng.normal(size=7) * 30
    label, scale = 3, 0.25
    value, grad = _run_row_kernel(kernel, spec, z, label, scale)
    # Reference: NumPy's log-sum-exp and softmax, independent of the plan.
    m = z.max()
    p = np.exp(z - m) / np.exp(z - m).sum()
    assert rel_err(value, m + np.log(np.exp(z - m).sum()) - z[label]) <= 1e-12
    assert rel_err(grad, scale * (p - np.eye(7)[label]), floor=1) <= 1e-12


def test_softmax_cross_entropy_is_stable_at_logits_of_1000(rng):
    ce = nn.loss("softmax_cross_entropy")
    value, grad = ce.value_and_grad(np.array([[1000.0, -1000.0]]), np.array([1]))
    assert value == 2000.0
    np.testing.assert_array_equal(grad, [[1.0, -1.0]])
    z = rng.normal(size=(5, 6)) * 1000.0
    y = rng.integers(0, 6, size=5)
    value, grad = ce.value_and_grad(z, y)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    with mpmath.workdps(60):
        ref_v, ref_g = mpmath.mpf(0), np.empty_like(z)
        for r in range(5):
            row = [mpmath.mpf(float(v)) for v in z[r]]
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row))
            ref_v += (lse - row[y[r]]) / 5
            ref_g[r] = [float((mpmath.exp(v - lse) - (j == y[r])) / 5) for j, v in enumerate(row)]
    assert abs(value - float(ref_v)) <= 1e-12 * abs(float(ref_v))
    assert rel_err(grad, ref_g, floor=1.0) <= 1e-12


def test_binary_cross_entropy_is_stable_at_logits_of_1000():
    bce = nn.loss("binary_cross_entropy")
    value, grad = bce.value_and_grad(np.array([1000.0, -1000.0, 1000.0]), np.array([0.0, 1.0, 1.0]))
    assert value == pytest.approx(2000.0 / 3, rel=1e-15)
    np.testing.assert_allclose(grad, np.array([1.0, -1.0, 0.0]) / 3, rtol=0, atol=1e-300)


def test_subgradient_conventions_at_exactly_the_kink():
    # MAE: sign(0) = 0; hinge: H(0) = 0 at y z = 1; Huber at |r| = δ: both branches give δ sign(r).
    _, g = nn.loss("mae").value_and_grad(np.array([0.5, 2.0]), np.array([0.5, 1.0]))
    np.testing.assert_array_equal(g, [0.0, 0.5])
    _, g = nn.loss("hinge").value_and_grad(np.array([1.0, -1.0, 0.5]), np.array([1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(g, [0.0, 0.0, -1.0 / 3])
    _, g = nn.loss("huber", delta=0.5).value_and_grad(np.array([1.5, -0.5, 0.0]), np.array([1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(g, np.array([0.5, -0.5, 0.0]) / 3)


def test_kinks_agree_with_torch():
    torch = pytest.importorskip("torch")
    for name, z, y in (("mae", [0.5, -2.0, 2.0], [0.5, -2.0, 1.0]), ("hinge", [1.0, -1.0, 2.0], [1.0, -1.0, 1.0])):
        z, y = np.array(z), np.array(y)
        _, g = nn.loss(name).value_and_grad(z, y)
        zt = torch.tensor(z, requires_grad=True)
        _torch_loss(name, zt, torch.tensor(y)).backward()
        np.testing.assert_array_equal(g, zt.grad.numpy())


def test_huber_delta_is_a_kernel_argument(rng):
    torch = pytest.importorskip("torch")
    z, y = rng.normal(size=20) * 3, rng.normal(size=20)
    for delta in (0.3, 2.5):
        value, grad = nn.loss("huber", delta=delta).value_and_grad(z, y)
        zt = torch.tensor(z, requires_grad=True)
        ref = torch.nn.functional.huber_loss(zt, torch.tensor(y), delta=delta)
        ref.backward()
        assert value == pytest.approx(ref.item(), rel=1e-13)
        assert rel_err(grad, zt.grad.numpy(), floor=1e-12) <= GRAD_RTOL


@pytest.mark.parametrize("name", ["mse", "softmax_cross_entropy"])
def test_float32_kernels_stay_close_to_float64(name, rng):
    loss = nn.loss(name)
    if name == "mse":
        z, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
        y32 = y.astype(np.float32)
    else:
        z, y = rng.normal(size=(8, 4)) * 3, rng.integers(0, 4, size=8)
        y32 = y
    v64, g64 = loss.value_and_grad(z, y)
    v32, g32 = loss.value_and_grad(z.astype(np.float32), y32)
    assert g32.dtype == np.float32
    assert abs(v32 - v64) <= 1e-5 * abs(v64)
    assert rel_err(g32, g64, floor=1e-3) <= 1e-5


def test_derivatives_are_derived_and_simplified_only_when_cheaper():
    from symopt.codegen.plan_gradients import plan_elementwise

    for name in ELEMENTWISE:
        plan = plan_elementwise(losses.LOSSES[name]())
        assert plan.derivative_ops <= plan.raw_ops
        assert plan.chosen in [c.label for c in plan.candidates if c.accepted]
        cheaper = [c for c in plan.candidates if c.accepted and c.ops < plan.derivative_ops]
        assert not cheaper
    plan = plan_elementwise(losses.binary_cross_entropy())
    # σ(z) − y in both branches (stable for z → ±∞).
    z, y = losses.z, losses.y
    for branch, _ in plan.derivative.args:
        assert sp.simplify(branch - (1 / (1 + sp.exp(-z)) - y)) == 0


@pytest.mark.parametrize("args, exc, match", [
    ((np.zeros((2, 3)), np.zeros((2, 2))), ValueError, "shape"),
    ((np.array([[np.nan, 0.0]]), np.zeros((1, 2))), ValueError, "NaN"),
    ((np.zeros(3), np.array([0.0, np.inf, 0.0])), ValueError, "inf"),
    ((np.array(["a"]), np.zeros(1)), TypeError, "real numbers"),
    ((np.zeros(0), np.zeros(0)), ValueError, "empty"),
])
def test_bad_inputs_raise_naming_the_problem(args, exc, match):
    with pytest.raises(exc, match=match):
        nn.loss("mse").value_and_grad(*args)


def test_bad_targets_and_labels():
    ce = nn.loss("softmax_cross_entropy")
    with pytest.raises(ValueError, match=r"label 5, outside the 5 classes \[0, 5\)"):
        ce.value(np.zeros((2, 5)), np.array([0, 5]))
    with pytest.raises(ValueError, match="label -1"):
        ce.value(np.zeros((2, 5)), np.array([0, -1]))
    with pytest.raises(TypeError, match="integer class labels"):
        ce.value(np.zeros((2, 5)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        ce.value(np.zeros((2, 5)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(batch, classes\)"):
        ce.value(np.zeros(5), np.array([0]))
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        nn.loss("binary_cross_entropy").value(np.zeros(2), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="-1 or \\+1"):
        nn.loss("hinge").value(np.zeros(2), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        nn.loss("nope")
    with pytest.raises(TypeError, match="unknown keyword argument 'beta'"):
        nn.loss("huber", beta=1.0)
    with pytest.raises(ValueError, match="'delta' = -1"):
        nn.loss("huber", delta=-1.0)
