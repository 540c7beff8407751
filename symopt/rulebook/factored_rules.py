"""Factored rules: ``adafactor`` (``torch.optim.Adafactor``, torch 2.13).

Adafactor (Shazeer & Stern 2018) keeps the row and column means of g² for a matrix and
estimates the second moment as their outer product over the mean of the rows
(:mod:`.factored`).  torch 2.13's algorithm, step t (``_single_tensor_adafactor``)::

    β̂ = t^{β2_decay};   ρ_t = min(γ, 1/√t);   α = max(ε2, RMS(θ)) ρ_t      (θ before the decay)
    θ ← θ (1 − γλ)
    factored (≥ 2-D, the last two axes):
        R ← R + β̂ (mean_j g² − R);   C ← C + β̂ (mean_i g² − C)
        v̂ = R C / max(mean_i R, ε1)
    else:  V ← V + β̂ (g² − V);   v̂ = V
    U = g / √max(v̂, ε1²);   θ ← θ − α / max(1, RMS(U)/d) · U

with g ← −g under ``maximize``; ε1 = the dtype's machine epsilon when ``eps=(None, ε2)``.
Symbols: γ ``lr``, λ ``weight_decay``, β2_decay, (ε1, ε2) ``eps``, d ``d``.
"""

from __future__ import annotations

import sympy as sp

from .factored import ColMean, RowMean, factored, machine_eps
from .metadata import NONE_VALUE, Hyper, State, t
from .reduction import tensor_rms
from .rule import Family, Rule

theta, g, R, C, V, A, vhat, U = sp.symbols("theta g R C V A vhat U")
lr, beta2_decay, eps1, eps2, d, weight_decay, maximize = sp.symbols(
    "lr beta2_decay eps1 eps2 d weight_decay maximize")

_SRC = "torch.optim 2.13"
_LATEX = {"theta": r"\theta", "lr": r"\gamma", "weight_decay": r"\lambda", "beta2_decay": r"\beta_{2,\mathrm{decay}}",
          "eps1": r"\epsilon_1", "eps2": r"\epsilon_2", "vhat": r"\hat{v}", "A": r"\alpha", "maximize":
          r"\text{maximize}"}


def adafactor() -> Rule:
    beta_t = t**beta2_decay
    e1 = sp.Piecewise((machine_eps, eps1 < 0), (eps1, True))   # eps=(None, ...): the dtype's epsilon
    grad = sp.Piecewise((-g, sp.Eq(maximize, 1)), (g, True))
    return Rule(
        "adafactor", param=theta, grad=g, source=_SRC, latex_names=_LATEX,
        doc="Adafactor, factored for params of two or more dimensions (torch.optim.Adafactor).",
        references=("https://docs.pytorch.org/docs/2.13/generated/torch.optim.Adafactor.html",
                    "Shazeer & Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost, ICML 2018"),
        state={R: State(0, key="row_var", shape="row", doc="row means of g² (…, m, 1)"),
               C: State(0, key="col_var", shape="col", doc="column means of g² (…, 1, n)"),
               V: State(0, key="variance", shape="vector", doc="g² of a param of fewer than two dimensions")},
        hyper={
            lr: Hyper(1e-2, low=0.0, doc="γ, learning rate (the relative step is min(γ, 1/√t))"),
            beta2_decay: Hyper(-0.8, high=0.0, doc="the second-moment weight of step t is t^β2_decay"),
            eps1: Hyper(NONE_VALUE, low=0.0, key="eps", index=0, kind="optional",
                        doc="ε1, floor of the variance estimate (None: the dtype's machine epsilon)"),
            eps2: Hyper(1e-3, low=0.0, key="eps", index=1, doc="ε2, floor of RMS(θ) in the step size"),
            d: Hyper(1.0, low=1.0, doc="d, clipping threshold of RMS(U)"),
            weight_decay: Hyper(0.0, low=0.0, doc="λ, decoupled weight decay: θ ← θ(1 − γλ)"),
            maximize: Hyper(False, kind="bool", doc="maximize the objective (g ← −g)"),
        },
        updates=[
            (A, sp.Max(eps2, tensor_rms(theta)) * sp.Min(lr, 1 / sp.sqrt(t))),
            (theta, theta * (1 - lr * weight_decay)),
            (R, R + beta_t * (RowMean(g**2) - R)),
            (C, C + beta_t * (ColMean(g**2) - C)),
            (V, V + beta_t * (g**2 - V)),
            (vhat, sp.Piecewise((R * C / sp.Max(ColMean(R), e1), factored), (V, True))),
            (U, grad / sp.sqrt(sp.Max(vhat, e1**2))),
            (theta, theta - A / sp.Max(1, tensor_rms(U) / d) * U),
        ],
    )


def families() -> list[Family]:
    rule = adafactor()
    return [Family(rule.name, [(sp.true, rule)], doc=rule.doc, source=_SRC, references=rule.references,
                   group="matrix")]
