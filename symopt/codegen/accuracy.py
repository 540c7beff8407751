"""Choosing the form of a derivative that a float64 kernel runs: the fewest operations among
the accurate ones.

:mod:`symopt.derive.elementwise` writes candidate forms of one derivative (the raw
``sympy.diff`` result first, then simplified or rewritten forms) and the check
points.  :func:`cheapest` keeps the one with the fewest operations (``sympy.count_ops``
after CSE) among those that are *accurate*: the candidate, printed exactly as the
float64 kernel will run it (:func:`symopt.codegen.printers.float64_function`), is
evaluated at every check point and compared with a high-precision evaluation
(:func:`~symopt.derive.mpeval.mp_eval`, 1100 digits, exact inputs) of the textbook
derivative.  A candidate is accurate when at every point it is finite and
``|candidate − reference| ≤ tol · max(|reference|, 1)`` (tol = 1e-12): relative
error for values above 1, absolute error below.  That rejects forms that overflow
(``eˣ/(eˣ+1)`` at x = 1000 is inf/inf) or lose digits, and keeps the cheap
output-based forms PyTorch also uses (``σ′ = σ(1 − σ)``).

Ties go to the earlier candidate, so the raw derivative is kept unless a rewrite
is strictly cheaper.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import sympy as sp

from ..derive.elementwise import ElementPlan, derivation, element_plan
from ..derive.mpeval import mp_eval
from ..derive.ops import cse_ops
from .printers import float64_function

__all__ = ["TOL", "Candidate", "cheapest", "plan_elementwise"]

TOL = 1e-12


class Candidate(NamedTuple):
    label: str
    expr: sp.Expr
    ops: int
    max_err: float       # max over points of |c − ref| / max(|ref|, 1); inf if not finite
    accepted: bool


def _error(expr, symbols, points, ref) -> float:
    f = float64_function(expr, symbols)
    worst = 0.0
    with np.errstate(all="ignore"):
        for p, r in zip(points, ref):
            if not math.isfinite(r):
                continue
            c = float(f(*[np.float64(float(v)) for v in p]))
            if not math.isfinite(c):
                return math.inf
            worst = max(worst, abs(c - r) / max(abs(r), 1.0))
    return worst


def cheapest(candidates, reference, symbols, points, *, tol: float = TOL) -> tuple:
    """``(best Candidate, all Candidates)``: the fewest-ops accurate candidate.

    ``candidates`` is a list of ``(label, expr)``; ``reference`` the exact
    derivative; ``symbols`` the argument order of ``points`` (tuples of exact
    SymPy numbers).  Raises ``ValueError`` when no candidate is accurate.
    """
    ref = [float(mp_eval(reference, dict(zip(symbols, p)))) for p in points]
    seen: dict = {}
    out = []
    for label, expr in candidates:
        if expr in seen:
            continue
        seen[expr] = label
        err = _error(expr, symbols, points, ref)
        out.append(Candidate(label, expr, cse_ops([expr]), err, err <= tol))
    accepted = [c for c in out if c.accepted]
    if not accepted:
        table = "; ".join(f"{c.label}: err {c.max_err:.3g}" for c in out)
        raise ValueError(f"no accurate form of the derivative among the candidates ({table})")
    best = min(accepted, key=lambda c: c.ops)  # min keeps the first of equal counts
    return best, out


def plan_elementwise(spec) -> ElementPlan:
    """Derive an elementwise loss or activation, choose the cheapest accurate form of its
    derivative, and plan its kernels."""
    d = derivation(spec)
    best, considered = cheapest(d.candidates, d.reference, d.symbols, d.points)
    return element_plan(spec, d, best, considered)
