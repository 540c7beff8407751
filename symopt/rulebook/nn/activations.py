"""Activations in SymPy (the math stage); their derivatives are derived, never typed.

==============  =====================================  ==========================================
name            f(x)                                   kernel form / note
==============  =====================================  ==========================================
``sigmoid``     1 / (1 + e^{−x})                       two branches, e^{−|x|} never overflows
``tanh``        tanh x
``relu``        max(0, x)                              f′(0) = 0
``leaky_relu``  x if x > 0 else α x                    f′(0) = α (``negative_slope``, 0.01)
``softplus``    log(1 + e^{x})                         x + log1p(e^{−x}) for x > 0, log1p(e^{x}) else
``gelu``        x/2 · (1 + erf(x/√2))                  the exact (erf) form
``softmax``     e^{x_k} / Σ_j e^{x_j}  (row-wise)       log-sum-exp shift by the row maximum
==============  =====================================  ==========================================

A derivative may be written in the output ``y = f(x)`` when that is cheaper and
as accurate (``1 − y²``, ``y(1 − y)``): the backward kernels receive both the
pre-activation and the output.  Kinks: ``H(0) = 0``, see :mod:`symopt.rulebook.nn.spec`.
The softmax's backward pass is the vector-Jacobian product
``Σ_k g_k ∂p_k/∂x_j``, which SymPy reduces to ``p_j (g_j − Σ_k g_k p_k)``.
"""

from __future__ import annotations

import sympy as sp
from sympy.codegen.cfunctions import log1p

from ...derive.rowwise import in_range, softmax_form, sums_to_reductions
from .spec import Elementwise, Hyper, Rowwise

__all__ = [
    "ACTIVATIONS",
    "gelu",
    "leaky_relu",
    "relu",
    "sigmoid",
    "softmax",
    "softmax_derivation",
    "softplus",
    "tanh",
]

x = sp.Symbol("x", real=True)
y = sp.Symbol("y", real=True)
alpha = sp.Symbol("negative_slope", positive=True)


def sigmoid() -> Elementwise:
    stable = sp.Piecewise((1 / (1 + sp.exp(-x)), x >= 0), (sp.exp(x) / (1 + sp.exp(x)), True))
    return Elementwise("sigmoid", "activation", x=x, output=y, expr=1 / (1 + sp.exp(-x)), kernel_expr=stable,
                       doc="Logistic sigmoid σ(x) = 1/(1 + e^{−x}).")


def tanh() -> Elementwise:
    return Elementwise("tanh", "activation", x=x, output=y, expr=sp.tanh(x), doc="Hyperbolic tangent.")


def relu() -> Elementwise:
    return Elementwise("relu", "activation", x=x, output=y, expr=sp.Max(0, x), kinks=(0,),
                       convention="f′(x) = H(x) with H(0) = 0: the derivative at 0 is 0 (as torch)",
                       doc="Rectified linear unit max(0, x).")


def leaky_relu() -> Elementwise:
    return Elementwise("leaky_relu", "activation", x=x, output=y,
                       expr=sp.Piecewise((x, x > 0), (alpha * x, True)), kinks=(0,),
                       hyper={alpha: Hyper(0.01, 0.0, key="negative_slope", doc="slope α for x ≤ 0")},
                       convention="f′(0) = α, the x ≤ 0 branch (as torch)",
                       latex_names={"negative_slope": r"\alpha"},
                       doc="Leaky ReLU: x for x > 0, α x otherwise (torch leaky_relu, α = 0.01).")


def softplus() -> Elementwise:
    stable = sp.Piecewise((x + log1p(sp.exp(-x)), x > 0), (log1p(sp.exp(x)), True))
    return Elementwise("softplus", "activation", x=x, output=y, expr=sp.log(1 + sp.exp(x)), kernel_expr=stable,
                       doc="Softplus log(1 + e^{x}), evaluated without overflow.")


def gelu() -> Elementwise:
    return Elementwise("gelu", "activation", x=x, output=y, expr=x / 2 * (1 + sp.erf(x / sp.sqrt(2))),
                       doc="Gaussian error linear unit, the exact erf form (torch gelu, approximate='none').")


def softmax_derivation() -> dict:
    """The softmax and its vector-Jacobian product over indexed sums, as SymPy derives them.

    ``p_k = e^{x_k}/Σ_j e^{x_j}``; ``vjp``: ∂(Σ_i g_i p_i)/∂x_k by ``sympy.diff``;
    ``vjp_p``: the same written in p (comes out as ``(g_k − Σ_i g_i p_i) p_k``).
    """
    i, j, k = sp.symbols("i j k", integer=True, nonnegative=True)
    K = sp.Symbol("K", integer=True, positive=True)
    X, G, P = sp.IndexedBase("x"), sp.IndexedBase("g"), sp.IndexedBase("p")
    total = sp.Sum(sp.exp(X[j]), (j, 0, K - 1))
    p_i = sp.exp(X[i]) / total
    vjp = in_range(sp.diff(sp.Sum(G[i] * p_i, (i, 0, K - 1)), X[k]).doit())
    S = sp.Symbol("S", positive=True)
    return {
        "symbols": {"i": i, "j": j, "k": k, "K": K, "x": X, "g": G, "p": P, "S": S, "total": total},
        "softmax": sp.exp(X[k]) / total,
        "vjp": vjp,
        "vjp_p": softmax_form(vjp, X, total, P, S),
    }


def softmax() -> Rowwise:
    d = softmax_derivation()
    s = d["symbols"]
    xj = sp.Symbol("x_j", real=True)
    gj = sp.Symbol("g_j", real=True)
    pj = sp.Symbol("p_j", real=True)
    m = sp.Symbol("m", real=True)
    S = sp.Symbol("S", positive=True)
    k = s["k"]
    vjp = d["vjp_p"].xreplace({s["g"][k]: gj, s["p"][k]: pj})
    vjp, reductions = sums_to_reductions(vjp, {s["g"]: gj, s["p"]: pj}, (sp.Symbol(f"dot{n}", real=True)
                                                                         for n in range(10)))
    return Rowwise(
        "softmax", "activation", element=xj,
        forward_reductions=((m, "max", xj), (S, "sum", sp.exp(xj - m))),
        forward_output=sp.exp(xj - m) / S,
        grad_reductions=tuple(reductions), grad_output=vjp, upstream=gj, output=pj, target_kind="real",
        textbook=r"p_{k} = \frac{e^{x_{k}}}{\sum_{j} e^{x_{j}}}, \qquad \sum_{i} g_{i} \frac{\partial p_{i}}"
                 r"{\partial x_{k}} = " + sp.latex(d["vjp_p"]),
        derived={k_: d[k_] for k_ in ("softmax", "vjp", "vjp_p")},
        doc="Softmax over the last axis (each row), shifted by the row maximum.",
    )


#: Every activation, by name, in listing order.
ACTIVATIONS = {
    "sigmoid": sigmoid,
    "tanh": tanh,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "softplus": softplus,
    "gelu": gelu,
    "softmax": softmax,
}
