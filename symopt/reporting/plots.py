"""The report's small figures, inlined as SVG (matplotlib, from the ``train``/``test`` extras).

Without matplotlib each function returns a sentence saying so (the page shows it instead).

* :func:`trajectory`: a rule on ``f(θ) = ½(θ₀² + 10 θ₁²)`` from ``(−1.5, 1)``, 100 steps:
  its float64 and float32 kernels, the rule's own updates evaluated at 50 digits with mpmath
  (:mod:`symopt.verify.check`, the reference the kernels are verified against) and the same
  rule in its other conventions;
* :func:`schedule`: a schedule over ``t``;
* :func:`nn_function`: a loss (at a fixed target) or activation and its derivative, both
  from the generated kernels.
"""

from __future__ import annotations

import io

import numpy as np
from markupsafe import Markup

STEPS = 100
START = (-1.5, 1.0)
CURVATURE = np.array([1.0, 10.0])
#: The learning rate of the trajectories where a rule's default is smaller (1e-3 moves too little in 100 steps).
LR = 0.05


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.hashsalt": "symopt-report", "svg.fonttype": "none", "font.size": 9,
                                "axes.titlesize": 9, "legend.fontsize": 8})
    import matplotlib.pyplot as plt

    return plt


TRAJECTORY_CAPTION = (f"{STEPS} steps from θ = {START} on f(θ) = ½(θ₀² + 10 θ₁²): the generated float64 and float32 "
                      "kernels, the rule's own SymPy updates evaluated with mpmath at 50 digits, and the same rule "
                      "in its other conventions (float64).")
MISSING = "matplotlib is not installed here (pip install 'symopt[train]'): no plot."


def _svg(fig, plt) -> Markup:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    return Markup(text[text.index("<svg"):])  # no XML prolog inside HTML


def _kwargs(family) -> dict:
    keys = {h.key or s.name: h for s, h in family.hyper.items() if h.index is None}
    lr = keys.get("lr")
    return {"lr": LR} if lr is not None and lr.default < LR else {}


def _kernel_path(name_or_family, kwargs, dtype) -> np.ndarray:
    from ..runtime.optimizer import Optimizer

    x = np.array(START, dtype=dtype)
    opt = Optimizer(name_or_family, [x], **kwargs)
    path = [x.astype(np.float64)]
    for _ in range(STEPS):
        opt.step([(CURVATURE * x).astype(dtype)])
        path.append(x.astype(np.float64))
    return np.array(path)


#: Steps of the 50-digit path of a rule with reductions (evaluated over the whole tensor, ~0.1 s a step).
REDUCTION_STEPS = 20


def _exact_path(family, kwargs) -> np.ndarray:
    """The rule's own SymPy updates applied at 50 digits (mpmath), as ``symopt verify`` does
    (:data:`REDUCTION_STEPS` steps for a rule with reductions, :data:`STEPS` otherwise)."""
    import mpmath
    import sympy as sp

    from ..rulebook.metadata import t as t_sym
    from ..rulebook.reduction import has_reductions
    from ..runtime.optimizer import Optimizer
    from ..verify.check import exact_step, hyper_values, mp_functions
    from ..verify.reductions import exact_tensor_step

    mpmath.mp.dps = 50
    opt = Optimizer(family.name if _builtin(family) else family, [np.array(START)], **kwargs)
    rule = next(r for _, r in family.variants if r.name == opt.variant)
    hyper = hyper_values(family, rule, opt.param_groups[0])
    x = [mpmath.mpf(v) for v in START]
    state = []
    for i in range(2):
        subs = {rule.param: x[i], **hyper}
        state.append({s: mpmath.mpf(float(sp.sympify(v.init).xreplace({k: sp.Float(str(w), 50) if not isinstance(
            w, int) else w for k, w in subs.items()}))) for s, v in rule.state.items()})
    symbols, fns = mp_functions(rule)
    path = [[float(v) for v in x]]
    for step in range(1, (REDUCTION_STEPS if has_reductions(rule) else STEPS) + 1):
        vals = [{rule.param: x[i], rule.grad: CURVATURE[i] * x[i], t_sym: step, **hyper, **state[i]} for i in range(2)]
        envs = exact_tensor_step(rule, vals) if has_reductions(rule) else [exact_step(rule, symbols, fns, v)
                                                                         for v in vals]
        x = [envs[i][rule.param] for i in range(2)]
        state = [{s: envs[i][s] for s in rule.state} for i in range(2)]
        path.append([float(v) for v in x])
    return np.array(path)


def _builtin(family) -> bool:
    from ..runtime.kernels import builtin_names

    return family.name in builtin_names()


def _loss(path) -> np.ndarray:
    return 0.5 * (CURVATURE * path ** 2).sum(axis=1)


#: The matrix problem of a matrix rule's plot: f(W) = ½‖A W − B‖_F² with a fixed 6×4 A and 4×3 W.
MATRIX_SHAPE = (4, 3)


def _matrix_losses(target, kwargs, dtype) -> np.ndarray:
    from ..runtime.optimizer import Optimizer

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    w = np.zeros(MATRIX_SHAPE, dtype=dtype)
    opt = Optimizer(target, [w], **kwargs)
    losses = []
    for _ in range(STEPS + 1):
        r = a @ w.astype(np.float64) - b
        losses.append(0.5 * float((r ** 2).sum()))
        opt.step([(a.T @ r).astype(dtype)])
    best = 0.5 * float((np.linalg.lstsq(a, b, rcond=None)[1]).sum())
    return np.array(losses) - best


def matrix_trajectory(family):
    """SVG of a matrix rule's excess loss over 100 steps on a small least-squares problem (float64
    and float32 kernels)."""
    plt = _pyplot()
    if plt is None:
        return MISSING
    target = family.name if _builtin(family) else family
    kwargs = _kwargs(family)
    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=100)
    for label, dtype, style in (("float64 kernel", np.float64, {"lw": 2.2, "color": "#1f77b4"}),
                                ("float32 kernel", np.float32, {"lw": 1.2, "ls": "--", "color": "#ff7f0e"})):
        ax.semilogy(np.arange(STEPS + 1), np.maximum(_matrix_losses(target, kwargs, dtype), 1e-16), label=label,
                    **style)
    ax.set(xlabel="step t", ylabel="f(W_t) − min f", title="½‖AW − B‖²_F, W of 4×3" + (
        f", lr = {kwargs['lr']}" if kwargs else ""))
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    return _svg(fig, plt)


def trajectory(family, others=()):
    """SVG of the rule's path and loss over 100 steps beside its references (see the module doc)."""
    plt = _pyplot()
    if plt is None:
        return MISSING
    from ..rulebook.catalog import family as builtin_family

    kwargs = _kwargs(family)
    target = family.name if _builtin(family) else family
    lines = [("float64 kernel", _kernel_path(target, kwargs, np.float64), {"lw": 2.2, "color": "#1f77b4"}),
             ("float32 kernel", _kernel_path(target, kwargs, np.float32), {"lw": 1.2, "ls": "--", "color": "#ff7f0e"}),
             ("the rule at 50 digits (mpmath)", _exact_path(family, kwargs),
              {"lw": 0, "marker": "o", "ms": 2.5, "color": "#2ca02c", "markevery": 4})]
    for k, name in enumerate(others):
        fam = builtin_family(name)
        lines.append((f"{name} (float64)", _kernel_path(name, _kwargs(fam), np.float64),
                      {"lw": 1.0, "ls": ":", "color": ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f")[k % 4]}))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(8.4, 3.6), dpi=100)
    u, v = np.meshgrid(np.linspace(-1.8, 1.8, 60), np.linspace(-1.2, 1.2, 60))
    ax.contour(u, v, 0.5 * (u ** 2 + 10 * v ** 2), levels=np.geomspace(0.01, 10, 8), colors="#bbbbbb",
               linewidths=0.6)
    for label, path, style in lines:
        ax.plot(path[:, 0], path[:, 1], label=label, **style)
        bx.semilogy(np.arange(len(path)), np.maximum(_loss(path), 1e-16), **style)
    ax.set(xlabel="θ₀", ylabel="θ₁", title="path on ½(θ₀² + 10 θ₁²)")
    bx.set(xlabel="step t", ylabel="f(θ_t)", title=f"{STEPS} steps" + (f", lr = {kwargs['lr']}" if kwargs else ""))
    bx.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=min(len(lines), 3), frameon=False)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.92, wspace=0.28, bottom=0.3 if len(lines) > 3 else 0.24)
    return _svg(fig, plt)


def schedule(s, steps: int | None = None):
    plt = _pyplot()
    if plt is None:
        return MISSING
    n = int(steps or s.horizon or 1000)
    ts = np.arange(1, n + 1)
    fig, ax = plt.subplots(figsize=(6.4, 2.8), dpi=100)
    ax.plot(ts, s.values(ts.tolist()), lw=1.8)
    ax.set(xlabel="step t", ylabel="η_t")
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.95, bottom=0.17)
    return _svg(fig, plt)


def _nn_values(spec, z):
    """(f, f′) at the points ``z`` from the generated kernels (a loss at target 1, or 0 for a real target)."""
    from symopt import nn

    if spec.kind == "activation":
        act = nn.activation(spec.name)
        if spec.name == "softmax":  # p₀ of the row (z, 0, 0) and ∂p₀/∂z₀ (backward with g = e₀)
            rows = np.zeros((len(z), 3))
            rows[:, 0] = z
            p = act.forward(rows)
            g = np.zeros_like(rows)
            g[:, 0] = 1.0
            return p[:, 0], act.backward(rows, p, g)[:, 0]
        return act.forward(z), act.derivative(z)
    loss = nn.loss(spec.name)
    if spec.name == "softmax_cross_entropy":  # the row (z, 0, 0) with label 0
        vals, ders = [], []
        for v in z:
            value, grad = loss.value_and_grad(np.array([[v, 0.0, 0.0]]), np.array([0]))
            vals.append(value)
            ders.append(grad[0, 0])
        return np.array(vals), np.array(ders)
    y = 0.0 if spec.target_kind == "real" else 1.0
    vals, ders = [], []
    for v in z:
        value, grad = loss.value_and_grad(np.array([v]), np.array([y]))
        vals.append(value)
        ders.append(grad[0])
    return np.array(vals), np.array(ders)


def nn_function(spec):
    plt = _pyplot()
    if plt is None:
        return MISSING
    z = np.linspace(-4, 4, 161)
    f, d = _nn_values(spec, z)
    fig, ax = plt.subplots(figsize=(6.4, 2.8), dpi=100)
    what = "f" if spec.kind == "activation" else "ℓ"
    ax.plot(z, f, lw=1.8, label=f"{what} (forward kernel)")
    ax.plot(z, d, lw=1.4, ls="--", label=f"{what}′ (backward kernel)")
    ax.axhline(0, color="#999999", lw=0.6)
    ax.set(xlabel="z" if spec.kind == "loss" else "x")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.95, bottom=0.17)
    return _svg(fig, plt)
