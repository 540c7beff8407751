"""Matrix rules: ``muon`` (``torch.optim.Muon``, torch 2.13).

Muon keeps a momentum buffer ``B`` per matrix and replaces the update by its
orthogonalization, five quintic Newton–Schulz steps (:mod:`.matrix`)::

    B ← B + (1 − μ)(g − B)                         buf.lerp_(grad, 1 − momentum)
    U = g + μ (B − g)   (nesterov)   or   U = B     grad.lerp(buf, momentum)
    X₀ = U / max(‖U‖_F, ε)
    X_{k+1} = a X_k + (b X_k X_kᵀ + c (X_k X_kᵀ)²) X_k,   k = 0 … ns_steps − 1
    θ ← θ (1 − γλ) − γ ρ X_{ns_steps},   ρ = √max(1, rows/cols)   (adjust_lr_fn None, "original")
                                          ρ = 0.2 √max(rows, cols) (adjust_lr_fn "match_rms_adamw")

torch runs the iteration in bfloat16; symopt runs it in the param's dtype (float32
or float64).  torch requires 2-D params; symopt reads a ``(d0, d1, …)`` param as the
``d0 × (d1⋯)`` matrix (conv kernels as in Keller Jordan's Muon), or as its param group's
``dimension_numbers`` select (Optax's ``MuonDimensionNumbers``; runtime/matrix.py).  ``adjust_lr_fn`` is a choice keyword
(``Hyper(kind="choice")``): any other value than torch's three is refused.  Symbols: γ ``lr``, λ ``weight_decay``,
μ ``momentum``, (a, b, c) ``ns_coefficients``, ε ``eps``, k ``ns_steps``.
"""

from __future__ import annotations

import sympy as sp

from .matrix import Iterate, cols, frobenius_norm, rows
from .metadata import Hyper, State
from .rule import Family, Rule

theta, g, B, U = sp.symbols("theta g B U")
lr, weight_decay, momentum, eps, ns_steps, nesterov, adjust = sp.symbols(
    "lr weight_decay momentum eps ns_steps nesterov adjust_lr_fn")
a, b, c = sp.symbols("a b c")
X = sp.MatrixSymbol("X", rows, cols)

_SRC = "torch.optim 2.13"
_LATEX = {"theta": r"\theta", "adjust_lr_fn": r"\mathrm{adjust}", "lr": r"\gamma", "weight_decay": r"\lambda", "momentum": r"\mu",
          "eps": r"\epsilon", "ns_steps": "k", "B": "B", "U": r"\widetilde{B}"}


def newton_schulz(x, start, count, coefficients) -> Iterate:
    """``count`` odd-polynomial steps X ← aX + (b XXᵀ + c (XXᵀ)²)X from ``start`` (Muon's quintic)."""
    qa, qb, qc = coefficients
    gram = x * x.T
    return Iterate(x, qa * x + (qb * gram + qc * gram**2) * x, start, count)


def _ratio() -> sp.Expr:
    """torch's ``_adjust_lr`` ratio by ``adjust_lr_fn`` (position 2: "match_rms_adamw")."""
    return sp.Piecewise((sp.Rational(1, 5) * sp.sqrt(sp.Max(rows, cols)), sp.Eq(adjust, 2)),
                        (sp.sqrt(sp.Max(1, rows / cols)), True))


def muon() -> Rule:
    orthogonal = newton_schulz(X, U / sp.Max(frobenius_norm(U), eps), ns_steps, (a, b, c))
    return Rule(
        "muon", param=theta, grad=g, source=_SRC, latex_names=_LATEX,
        doc="Muon: momentum, then its Newton–Schulz orthogonalization (torch.optim.Muon, iterated in the "
            "param's dtype).",
        references=("https://docs.pytorch.org/docs/2.13/generated/torch.optim.Muon.html",
                    "https://kellerjordan.github.io/posts/muon/"),
        state={B: State(0, key="momentum_buffer", doc="momentum buffer")},
        hyper={
            lr: Hyper(1e-3, low=0.0, doc="γ, learning rate"),
            weight_decay: Hyper(0.1, low=0.0, doc="λ, decoupled weight decay: θ ← θ(1 − γλ)"),
            momentum: Hyper(0.95, low=0.0, doc="μ, momentum factor"),
            nesterov: Hyper(True, kind="bool", doc="Nesterov momentum: U = g + μ(B − g)"),
            a: Hyper(3.4445, key="ns_coefficients", index=0, doc="a of the Newton–Schulz polynomial"),
            b: Hyper(-4.7750, key="ns_coefficients", index=1, doc="b of the Newton–Schulz polynomial"),
            c: Hyper(2.0315, key="ns_coefficients", index=2, doc="c of the Newton–Schulz polynomial"),
            eps: Hyper(1e-7, low=0.0, low_open=True, doc="ε: X₀ = U / max(‖U‖_F, ε)"),
            ns_steps: Hyper(5, low=0, high=99, doc="number of Newton–Schulz steps (an integer, < 100 as torch)"),
            adjust: Hyper(0, kind="choice", choices=(None, "original", "match_rms_adamw"),
                          doc="learning-rate scaling by shape: None/'original' √max(1, rows/cols), "
                              "'match_rms_adamw' 0.2 √max(rows, cols)"),
        },
        updates=[
            (B, B + (1 - momentum) * (g - B)),
            (U, sp.Piecewise((g + momentum * (B - g), sp.Eq(nesterov, 1)), (B, True))),
            (theta, theta * (1 - lr * weight_decay) - lr * _ratio() * orthogonal),
        ],
    )


def families() -> list[Family]:
    rule = muon()
    return [Family(rule.name, [(sp.true, rule)], doc=rule.doc, source=_SRC, references=rule.references,
                   group="matrix",
                   constraints=[(sp.Eq(ns_steps, sp.floor(ns_steps)), "ns_steps must be an integer")])]
