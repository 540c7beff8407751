"""Kronecker-factored rules: ``shampoo`` (pytorch-optimizer 4.1.0's ``Shampoo``).

Shampoo (Gupta, Koren & Singer 2018) on a ``rows × cols`` param, as pytorch-optimizer writes it::

    g ← −g                                       (maximize)
    U = g + μ (M − g)                            grad.lerp_(momentum_buffer, momentum); M₀ = g₁
    U ← U + λ θ                                  (weight_decouple False: coupled decay)
    θ ← θ (1 − λ η')                             (weight_decouple True; η' = 1 if fixed_decay else γ)
    L ← L + U Uᵀ,   R ← R + Uᵀ U                 pre_cond_0, pre_cond_1 (L₀ = R₀ = ε I)
    H_L = L^{-1/4},  H_R = R^{-1/4}              inv_pre_cond_0/1, when t mod k = 0 (H₀ = 0)
    M ← H_L U H_R                                momentum_buffer: the preconditioned gradient
    θ ← θ − γ M

pytorch-optimizer roots ``L`` by an SVD, symopt by a symmetric eigendecomposition (the same
factors for a positive definite ``L``).  pytorch-optimizer preconditions every dimension of an
N-d tensor with the root ``−1/(2N)``; symopt reads a ``(d0, d1, …)`` param as the ``d0 × (d1⋯)``
matrix (as Muon does) and preconditions its two sides with ``−1/4``: equal for 2-D params.
Symbols: γ ``lr``, μ ``momentum``, λ ``weight_decay``, ε ``matrix_eps``,
k ``preconditioning_compute_steps``.
"""

from __future__ import annotations

import sympy as sp

from .matrix import cols, rows
from .metadata import Hyper, State, t
from .preconditioned import InverseRoot, MatrixState, Preconditioned
from .rule import Family, Rule

theta, g, M, U, gs = sp.symbols("theta g M U g_s")
lr, momentum, weight_decay, decouple, fixed, steps, matrix_eps, maximize = sp.symbols(
    "lr momentum weight_decay weight_decouple fixed_decay preconditioning_compute_steps matrix_eps maximize")
G = sp.MatrixSymbol("G", rows, cols)
L, HL = sp.MatrixSymbol("L", rows, rows), sp.MatrixSymbol("H_L", rows, rows)
R, HR = sp.MatrixSymbol("R", cols, cols), sp.MatrixSymbol("H_R", cols, cols)

_SRC = "pytorch-optimizer 4.1.0"
_LATEX = {"theta": r"\theta", "lr": r"\gamma", "momentum": r"\mu", "weight_decay": r"\lambda",
          "matrix_eps": r"\epsilon", "preconditioning_compute_steps": "k", "weight_decouple": r"\mathrm{decouple}",
          "fixed_decay": r"\mathrm{fixed}", "maximize": r"\mathrm{max}", "M": "M", "U": "U", "g_s": r"\tilde{g}"}


def _on(flag) -> sp.Basic:
    return sp.Eq(flag, 1)


def shampoo() -> Rule:
    refresh = sp.Eq(sp.Mod(t, steps), 0)
    preconditioned = Preconditioned(G, U, [
        MatrixState(L, matrix_eps * sp.Identity(rows), L + G * G.T, key="pre_cond_0"),
        MatrixState(HL, sp.ZeroMatrix(rows, rows), InverseRoot(L, 4), key="inv_pre_cond_0", when=refresh),
        MatrixState(R, matrix_eps * sp.Identity(cols), R + G.T * G, key="pre_cond_1"),
        MatrixState(HR, sp.ZeroMatrix(cols, cols), InverseRoot(R, 4), key="inv_pre_cond_1", when=refresh),
    ], HL * G * HR)
    decay = sp.Piecewise((weight_decay * sp.Piecewise((1, _on(fixed)), (lr, True)), _on(decouple)), (0, True))
    return Rule(
        "shampoo", param=theta, grad=g, source=_SRC, latex_names=_LATEX,
        doc="Shampoo: Kronecker-factored preconditioning L^{-1/4} G R^{-1/4} (pytorch_optimizer.Shampoo).",
        references=("https://arxiv.org/abs/1802.09568",
                    "https://github.com/kozistr/pytorch_optimizer/blob/main/pytorch_optimizer/optimizer/shampoo.py"),
        state={M: State(0, key="momentum_buffer", doc="the last preconditioned gradient (the first gradient at t = 1)")},
        hyper={
            lr: Hyper(1e-3, low=0.0, doc="γ, learning rate"),
            momentum: Hyper(0.0, low=0.0, high=1.0, doc="μ, momentum: U = g + μ(M − g)"),
            weight_decay: Hyper(0.0, low=0.0, doc="λ, weight decay"),
            decouple: Hyper(False, kind="bool", doc="decoupled weight decay θ ← θ(1 − λγ) instead of U ← U + λθ"),
            fixed: Hyper(False, kind="bool", doc="decoupled decay without the learning rate: θ ← θ(1 − λ)"),
            steps: Hyper(1, low=1.0, doc="k, recompute the inverse roots every k steps (an integer)"),
            matrix_eps: Hyper(1e-6, low=0.0, doc="ε, the statistics start at ε I"),
            maximize: Hyper(False, kind="bool", doc="maximize the objective (g ← −g)"),
        },
        updates=[
            (gs, sp.Piecewise((-g, _on(maximize)), (g, True))),
            (U, gs + momentum * (sp.Piecewise((g, sp.Eq(t, 1)), (M, True)) - gs)
             + sp.Piecewise((weight_decay * theta, sp.Eq(decouple, 0)), (0, True))),
            (M, preconditioned),
            (theta, theta * (1 - decay) - lr * M),
        ],
    )


def families() -> list[Family]:
    rule = shampoo()
    return [Family(rule.name, [(sp.true, rule)], doc=rule.doc, source=_SRC, references=rule.references,
                   group="matrix",
                   constraints=[(sp.Eq(steps, sp.floor(steps)), "preconditioning_compute_steps must be an integer")])]
