"""Losses in SymPy (the math stage); their gradients are derived, never typed.

Every loss is averaged over the batch like ``torch.nn.functional``'s defaults:
the elementwise losses over every element of the prediction, the softmax
cross-entropy over the samples.  ``z`` is the prediction (a logit for the
cross-entropies), ``y`` the target.

=======================  ==========================================  ==================
name                     ℓ                                           target
=======================  ==========================================  ==================
``mse``                  (z − y)²                                    real
``mae``                  |z − y|                                     real
``huber``                ½ r² if |r| ≤ δ else δ(|r| − ½δ), r = z − y real
``binary_cross_entropy`` −y log σ(z) − (1 − y) log(1 − σ(z))         probability in [0, 1]
``hinge``                max(0, 1 − y z)                             −1 or +1
``softmax_cross_entropy`` log Σ_j e^{z_j} − z_y                      integer label
=======================  ==========================================  ==================

Kinks follow one convention (``H(0) = 0``, ``sign(0) = 0``): the MAE's derivative
at z = y is 0, the hinge's at y z = 1 is 0; Huber is differentiable everywhere.
The cross-entropies are evaluated in stable form: binary cross-entropy as
``z(1 − y) + log1p(e^{−z})`` for z > 0 and ``−z y + log1p(e^{z})`` otherwise,
softmax cross-entropy with log-sum-exp (``m = max_j z_j``); their gradients come
out of SymPy as ``σ(z) − y`` and ``p − y``.
"""

from __future__ import annotations

import sympy as sp
from sympy.codegen.cfunctions import log1p

from ...derive.rowwise import in_range, softmax_form, stabilize
from .spec import Elementwise, Hyper, Rowwise

__all__ = [
    "LOSSES",
    "binary_cross_entropy",
    "hinge",
    "huber",
    "mae",
    "mse",
    "softmax_cross_entropy",
    "softmax_cross_entropy_derivation",
]

z = sp.Symbol("z", real=True)
y = sp.Symbol("y", real=True)
delta = sp.Symbol("delta", positive=True)

_KINKS = "at a kink the step function is pinned to H(0) = 0 and sign(0) = 0"


def mse() -> Elementwise:
    return Elementwise("mse", "loss", x=z, target=y, expr=(z - y) ** 2,
                       doc="Mean squared error: mean over every element of (z − y)² (torch mse_loss).")


def mae() -> Elementwise:
    return Elementwise("mae", "loss", x=z, target=y, expr=sp.Abs(z - y), kinks=(0,),
                       convention="∂|z − y|/∂z = sign(z − y), 0 at z = y (" + _KINKS + ")",
                       doc="Mean absolute error: mean over every element of |z − y| (torch l1_loss).")


def huber() -> Elementwise:
    r = z - y
    expr = sp.Piecewise((r**2 / 2, sp.Abs(r) <= delta), (delta * (sp.Abs(r) - delta / 2), True))
    return Elementwise("huber", "loss", x=z, target=y, expr=expr, kinks=(0, 1, -1),
                       hyper={delta: Hyper(1.0, 0.0, low_open=True, key="delta",
                                           doc="δ, where the quadratic turns linear")},
                       convention="differentiable everywhere: r inside |r| ≤ δ, δ sign(r) outside",
                       latex_names={"delta": r"\delta"},
                       doc="Huber loss with threshold δ (torch huber_loss), mean over every element.")


def binary_cross_entropy() -> Elementwise:
    sigma = 1 / (1 + sp.exp(-z))
    textbook = -(y * sp.log(sigma) + (1 - y) * sp.log(1 - sigma))
    stable = sp.Piecewise((z * (1 - y) + log1p(sp.exp(-z)), z > 0), (-z * y + log1p(sp.exp(z)), True))
    return Elementwise("binary_cross_entropy", "loss", x=z, target=y, expr=textbook, kernel_expr=stable,
                       target_kind="probability",
                       doc="Binary cross-entropy on logits z (torch binary_cross_entropy_with_logits), "
                           "mean over every element; targets are probabilities in [0, 1].")


def hinge() -> Elementwise:
    return Elementwise("hinge", "loss", x=z, target=y, expr=sp.Max(0, 1 - y * z), target_kind="sign",
                       kinks=(0,),
                       convention="∂/∂z = −y H(1 − y z) with H(0) = 0: 0 at the kink y z = 1",
                       doc="Hinge loss max(0, 1 − y z) for targets ±1, mean over every element.")


def softmax_cross_entropy_derivation() -> dict:
    """The derivation, step by step, as SymPy objects (indexed sums over K classes).

    ``loss``: L = log Σ_j e^{z_j} − Σ_j y_j z_j (y one-hot); ``gradient``: ∂L/∂z_k
    from ``sympy.diff``; ``gradient_p``: the same with p_k = e^{z_k}/Σ_j e^{z_j}
    (comes out as p_k − y_k); ``loss_stable``/``gradient_stable``: log-sum-exp
    form in m = max_j z_j and S = Σ_j e^{z_j − m}.
    """
    j, k = sp.symbols("j k", integer=True, nonnegative=True)
    K = sp.Symbol("K", integer=True, positive=True)
    Z, Y, P = sp.IndexedBase("z"), sp.IndexedBase("y"), sp.IndexedBase("p")
    total = sp.Sum(sp.exp(Z[j]), (j, 0, K - 1))
    loss = sp.log(total) - sp.Sum(Y[j] * Z[j], (j, 0, K - 1))
    grad = in_range(sp.diff(loss, Z[k]).doit())
    S = sp.Symbol("S", positive=True)
    m = sp.Symbol("m", real=True)
    return {
        "symbols": {"j": j, "k": k, "K": K, "z": Z, "y": Y, "p": P, "S": S, "m": m, "total": total},
        "loss": loss,
        "gradient": grad,
        "gradient_p": softmax_form(grad, Z, total, P, S),
        "loss_stable": stabilize(loss, total, m, S),
        "gradient_stable": stabilize(grad, total, m, S),
    }


def softmax_cross_entropy() -> Rowwise:
    d = softmax_cross_entropy_derivation()
    s = d["symbols"]
    zj = sp.Symbol("z_j", real=True)
    yj = sp.Symbol("y_j", real=True)
    picked = sp.Symbol("z_label", real=True)
    m, S = s["m"], s["S"]
    k, Z, Y = s["k"], s["z"], s["y"]
    # Row value: the stable loss with Σ_j y_j z_j = z_label (one-hot y).
    value = d["loss_stable"].replace(lambda a: isinstance(a, sp.Sum), lambda a: picked)
    grad = d["gradient_stable"].xreplace({Z[k]: zj, Y[k]: yj})
    return Rowwise(
        "softmax_cross_entropy", "loss", element=zj,
        forward_reductions=((m, "max", zj), (S, "sum", sp.exp(zj - m))),
        forward_value=value, grad_output=grad, onehot=yj, picked=picked,
        textbook=r"L = \log \sum_{j} e^{z_{j}} - z_{y}, \qquad \frac{\partial L}{\partial z_{k}} = "
                 + sp.latex(d["gradient_p"]),
        derived={k_: d[k_] for k_ in ("loss", "gradient", "gradient_p", "loss_stable", "gradient_stable")},
        doc="Softmax cross-entropy on logits with integer labels (torch cross_entropy), mean over "
            "the samples; log-sum-exp with the row maximum, so logits of ±1000 are exact.",
    )


#: Every loss, by name, in listing order.
LOSSES = {
    "mse": mse,
    "mae": mae,
    "huber": huber,
    "binary_cross_entropy": binary_cross_entropy,
    "hinge": hinge,
    "softmax_cross_entropy": softmax_cross_entropy,
}
