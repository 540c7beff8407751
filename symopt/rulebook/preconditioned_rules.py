"""Kronecker-factored rules: ``shampoo`` and ``soap`` (pytorch-optimizer 4.1.0's ``Shampoo``, ``SOAP``).

Shampoo (Gupta, Koren & Singer 2018) on a ``rows × cols`` param, as pytorch-optimizer writes it::

    g ← −g                                       (maximize)
    U = g + μ (M − g)                            grad.lerp_(momentum_buffer, momentum); M₀ = g₁
    U ← U + λ θ                                  (weight_decouple False: coupled decay)
    θ ← θ (1 − λ η')                             (weight_decouple True; η' = 1 if fixed_decay else γ)
    L ← L + U Uᵀ,   R ← R + Uᵀ U                 pre_cond_0, pre_cond_1 (L₀ = R₀ = ε I)
    H_L = L^{-1/4},  H_R = R^{-1/4}              inv_pre_cond_0/1, when t mod k = 0 (H₀ = 0)
    M ← H_L U H_R                                momentum_buffer: the preconditioned gradient
    θ ← θ − γ M

On an N-d param every axis k keeps its own statistic ``L_k ← L_k + U_(k) U_(k)ᵀ`` (``U_(k)`` the
unfolding along k, ``d_k × (the rest)``) and root ``H_k = L_k^{-1/(2N)}``, and ``M = U ×₀ H₀ ⋯ ×_{N−1}
H_{N−1}`` (each axis in turn): a 2-D param is the ``L^{-1/4} U R^{-1/4}`` above (``pre_cond_0``
= L, ``pre_cond_1`` = R), a 1-D one full-matrix AdaGrad ``L^{-1/2} u``, a 0-D one plain SGD.
pytorch-optimizer roots ``L_k`` by an SVD, symopt by a symmetric eigendecomposition (the same
factors for a positive definite ``L_k``).
Symbols: γ ``lr``, μ ``momentum``, λ ``weight_decay``, ε ``matrix_eps``,
k ``preconditioning_compute_steps``.

SOAP (Vyas et al. 2024: Adam in the eigenbasis of Shampoo's preconditioner), as pytorch-optimizer
writes it for a 2-D param (an N-d one: a statistic and a basis per axis, ``Ĝ = G ×₀ Q₀ᵀ ⋯``); its
first step only collects the statistics (``w = 0`` at t = 1, else 1)::

    g ← −g                                       (maximize)
    m ← m + w (1 − β₁)(g − m)                    exp_avg, in the param's basis
    Ĝ = Q_Lᵀ G Q_R,  M̂ = Q_Lᵀ M Q_R              G, M: the matrices of g and m
    v ← v + w (1 − β₂)(Ĝ² − v)                   exp_avg_sq, in the rotated basis
    U = Q_L (M̂ / (√v + ε)) Q_Rᵀ
    θ ← (θ − η U)(1 − w γ λ)                     η = γ √(1 − β₂^{t−1}) / (1 − β₁^{t−1}) (correct_bias)
    L ← β_s L + (1 − β_s) G Gᵀ,  R ← β_s R + (1 − β_s) Gᵀ G      GG_0, GG_1 (β_s: shampoo_beta, else β₂)
    Q_L, Q_R ← Eigenbasis(L), Eigenbasis(R)      Q_0, Q_1: exact (eigh) at t = 1, then every f steps
                                                 one power-iteration step + QR, v reordered

An axis longer than ``max_precondition_dim``, and the axis of a 1-D param unless
``precondition_1d``, keeps no statistic and no basis: it is left as it is (a 1-D param's default
SOAP is Adam with the first step skipped).  ``merge_dims`` reads the param with adjacent axes merged
while their product stays within ``max_precondition_dim`` (pytorch-optimizer's ``merge_small_dims``;
with ``data_format="channels_last"`` refused); ``normalize_gradient`` divides ``U`` by
``√mean(U²) + ε`` (over the whole tensor) before the step.
"""

from __future__ import annotations

import sympy as sp

from .matrix import cols, rows
from .metadata import Hyper, State, t
from .preconditioned import Eigenbasis, InverseRoot, MatrixState, Preconditioned, RMSNormalized, n_axes
from .rule import Family, Rule

theta, g, M, U, gs = sp.symbols("theta g M U g_s")
lr, momentum, weight_decay, decouple, fixed, steps, matrix_eps, maximize = sp.symbols(
    "lr momentum weight_decay weight_decouple fixed_decay preconditioning_compute_steps matrix_eps maximize")
G = sp.MatrixSymbol("G", rows, cols)
L, HL = sp.MatrixSymbol("L", rows, rows), sp.MatrixSymbol("H", rows, rows)

_SRC = "pytorch-optimizer 4.1.0"
_LATEX = {"theta": r"\theta", "lr": r"\gamma", "momentum": r"\mu", "weight_decay": r"\lambda",
          "matrix_eps": r"\epsilon", "preconditioning_compute_steps": "k", "weight_decouple": r"\mathrm{decouple}",
          "fixed_decay": r"\mathrm{fixed}", "maximize": r"\mathrm{max}", "M": "M", "U": "U", "g_s": r"\tilde{g}"}


def _on(flag) -> sp.Basic:
    return sp.Eq(flag, 1)


def shampoo() -> Rule:
    refresh = sp.Eq(sp.Mod(t, steps), 0)
    preconditioned = Preconditioned(G, U, [
        MatrixState(L, matrix_eps * sp.Identity(rows), L + G * G.T, key="pre_cond"),
        MatrixState(HL, sp.ZeroMatrix(rows, rows), InverseRoot(L, 2 * n_axes), key="inv_pre_cond", when=refresh),
    ], HL * G, every_axis=True)
    decay = sp.Piecewise((weight_decay * sp.Piecewise((1, _on(fixed)), (lr, True)), _on(decouple)), (0, True))
    return Rule(
        "shampoo", param=theta, grad=g, source=_SRC, latex_names=_LATEX,
        doc="Shampoo: Kronecker-factored preconditioning, L_k^{-1/(2N)} on every axis k (pytorch_optimizer.Shampoo).",
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


m, v, gp, mp, u, step_size = sp.symbols("m v g_p m_p u eta")
beta1, beta2, shampoo_beta, frequency, max_dim, merge, pre1d, correct_bias, normalize, data_format, eps = sp.symbols(
    "beta1 beta2 shampoo_beta precondition_frequency max_precondition_dim merge_dims precondition_1d correct_bias "
    "normalize_gradient data_format eps")
Mm, N = sp.MatrixSymbol("M", rows, cols), sp.MatrixSymbol("N", rows, cols)
Q = sp.MatrixSymbol("Q", rows, rows)
_LATEX_SOAP = {"theta": r"\theta", "lr": r"\gamma", "beta1": r"\beta_1", "beta2": r"\beta_2",
               "shampoo_beta": r"\beta_s", "weight_decay": r"\lambda", "eps": r"\epsilon",
               "precondition_frequency": "f", "g_s": r"\tilde{g}", "g_p": r"\hat{g}", "m_p": r"\hat{m}", "eta": r"\eta",
               "correct_bias": r"\mathrm{correct}", "maximize": r"\mathrm{max}",
               "normalize_gradient": r"\mathrm{normalize}"}


def soap() -> Rule:
    first = sp.Eq(t, 1)
    refresh = sp.Or(first, sp.Eq(sp.Mod(t - 1, frequency), 0))
    sb = sp.Piecewise((beta2, shampoo_beta < 0), (shampoo_beta, True))
    warm = sp.Piecewise((0, first), (1, True))       # the first step only collects the statistics
    bc1 = sp.Piecewise((1, first), (1 - beta1 ** (t - 1), True))
    eta = sp.Piecewise((0, first), (lr * sp.sqrt(1 - beta2 ** (t - 1)) / bc1, _on(correct_bias)), (lr, True))
    # pytorch-optimizer rotates an axis no longer than max_precondition_dim, a 1-D param's only if asked
    # (merge_dims: adjacent axes merged while their product stays within max_precondition_dim)
    keep = sp.And(rows <= max_dim, sp.Or(n_axes >= 2, _on(pre1d)))
    merged = sp.Piecewise((max_dim, _on(merge)), (0, True))
    rotate = Preconditioned(G, gs, [
        MatrixState(L, sp.ZeroMatrix(rows, rows), sb * L + (1 - sb) * G * G.T, key="GG", at_end=True),
        MatrixState(Q, sp.ZeroMatrix(rows, rows), Eigenbasis(L, Q, v, first), key="Q", when=refresh, at_end=True),
    ], Q.T * G, every_axis=True, keep=keep, merge=merged)
    return Rule(
        "soap", param=theta, grad=g, source=_SRC, latex_names=_LATEX_SOAP,
        doc="SOAP: Adam's moments in the eigenbasis of Shampoo's preconditioner (pytorch_optimizer.SOAP).",
        references=("https://arxiv.org/abs/2409.11321",
                    "https://github.com/kozistr/pytorch_optimizer/blob/main/pytorch_optimizer/optimizer/soap.py"),
        state={m: State(0, key="exp_avg", doc="first moment, in the param's basis"),
               v: State(0, key="exp_avg_sq", doc="second moment, in the rotated basis Q_Lᵀ · Q_R")},
        hyper={
            lr: Hyper(3e-3, low=0.0, doc="γ, learning rate"),
            beta1: Hyper(0.95, low=0.0, high=1.0, high_open=True, key="betas", index=0, doc="β₁, first moment decay"),
            beta2: Hyper(0.95, low=0.0, high=1.0, high_open=True, key="betas", index=1,
                         doc="β₂, second moment decay"),
            shampoo_beta: Hyper(-1.0, low=-1.0, high=1.0,
                                doc="β_s, the statistics' decay (-1: β₂, pytorch-optimizer's None)"),
            weight_decay: Hyper(1e-2, low=0.0, doc="λ, decoupled weight decay θ ← θ(1 − γλ)"),
            frequency: Hyper(10, low=1.0, doc="f, refresh the eigenbases every f steps (an integer)"),
            max_dim: Hyper(10000, low=1.0, doc="the longest axis rotated (a longer one is left as it is)"),
            merge: Hyper(False, kind="bool", doc="merge adjacent axes up to max_precondition_dim (channels_first)"),
            pre1d: Hyper(False, kind="bool", doc="rotate 1-D params too"),
            correct_bias: Hyper(True, kind="bool", doc="Adam's bias corrections in the step size"),
            normalize: Hyper(False, kind="bool", doc="divide the update by its root mean square (+ ε)"),
            data_format: Hyper(0, kind="choice", choices=("channels_first", "channels_last"),
                               doc="layout for merge_dims (no effect without it; channels_last refused with it)"),
            eps: Hyper(1e-8, low=0.0, doc="ε, added to √v"),
            maximize: Hyper(False, kind="bool", doc="maximize the objective (g ← −g)"),
        },
        updates=[
            (gs, sp.Piecewise((-g, _on(maximize)), (g, True))),
            (m, m + warm * (1 - beta1) * (gs - m)),
            (gp, rotate),
            (mp, Preconditioned(Mm, m, [], Q.T * Mm, every_axis=True, keep=keep, merge=merged)),
            (v, v + warm * (1 - beta2) * (gp ** 2 - v)),
            (u, Preconditioned(N, mp / (sp.sqrt(v) + eps), [], RMSNormalized(Q * N, eps, _on(normalize)),
                               every_axis=True, keep=keep, merge=merged)),
            (step_size, eta),
            (theta, (theta - step_size * u) * (1 - warm * lr * weight_decay)),
        ],
    )


def families() -> list[Family]:
    rule = shampoo()
    out = [Family(rule.name, [(sp.true, rule)], doc=rule.doc, source=_SRC, references=rule.references,
                  group="matrix",
                  constraints=[(sp.Eq(steps, sp.floor(steps)), "preconditioning_compute_steps must be an integer")])]
    rule = soap()
    out.append(Family(rule.name, [(sp.true, rule)], doc=rule.doc, source=_SRC, references=rule.references,
                      group="matrix", constraints=[
                          (sp.Eq(frequency, sp.floor(frequency)), "precondition_frequency must be an integer"),
                          (sp.Or(shampoo_beta >= 0, sp.Eq(shampoo_beta, -1)),
                           "shampoo_beta must be in [0, 1] (or -1 for beta2)"),
                          (sp.Or(sp.Eq(merge, 0), sp.Eq(data_format, 0)),
                           "merge_dims=True with data_format='channels_last' is not supported (symopt merges the "
                           "axes in the param's own order)"),
                      ]))
    return out
