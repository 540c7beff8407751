"""Simplification with an op-count check: "simplify" must never make a kernel slower or worse.

:func:`cheapest` takes candidate forms of one derivative (the raw ``sympy.diff``
result first, then simplified or rewritten forms) and keeps the one with the
fewest operations (``sympy.count_ops`` after CSE) among those that are
*accurate*: the candidate, printed exactly as the float64 kernel will run it, is
evaluated at a fixed set of points and compared with a high-precision
evaluation (:func:`~symopt.derive.mpeval.mp_eval`, 1100 digits, exact inputs) of
the reference derivative.  A candidate is accurate when at every point it is finite and
``|candidate − reference| ≤ tol · max(|reference|, 1)`` (tol = 1e-12): relative
error for values above 1, absolute error below.  That rejects forms that
overflow (``eˣ/(eˣ+1)`` at x = 1000 is inf/inf) or lose digits, and keeps the
cheap output-based forms PyTorch also uses (``σ′ = σ(1 − σ)``).

Ties go to the earlier candidate, so the raw derivative is kept unless a
rewrite is strictly cheaper.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import sympy as sp

from .ops import cse_ops

__all__ = ["TOL", "Candidate", "cheapest", "fold_constants", "pin_heaviside", "use_expm1_log1p"]

TOL = 1e-12


class Candidate(NamedTuple):
    label: str
    expr: sp.Expr
    ops: int
    max_err: float       # max over points of |c − ref| / max(|ref|, 1); inf if not finite
    accepted: bool


def pin_heaviside(expr, h0=0):
    """Every ``Heaviside(u)`` becomes ``Heaviside(u, h0)``: the step at 0 is pinned (default 0)."""
    return expr.replace(lambda e: isinstance(e, sp.Heaviside), lambda e: sp.Heaviside(e.args[0], h0))


def fold_constants(expr):
    """Numeric sub-expressions (``sqrt(2)/(2 sqrt(pi))``) become one 30-digit Float each.

    Rationals stay exact; a product's numeric factors fold into one coefficient.
    """
    def fold(e):
        return e if e.is_Rational else sp.Float(e.evalf(30), 30)
    return expr.replace(lambda e: e.is_number and not e.is_Atom and not e.is_Rational, fold)


def use_expm1_log1p(expr):
    """``eᵘ − 1 → expm1(u)``, ``1 − eᵘ → −expm1(u)``, ``log(1 + u) → log1p(u)``.

    Same operation count, no cancellation when ``u`` is tiny.
    """
    from sympy.codegen.cfunctions import expm1, log1p

    def fix_add(e):
        args = list(e.args)
        for n, sign in ((sp.S.NegativeOne, 1), (sp.S.One, -1)):
            if n not in args:
                continue
            for a in args:
                inner = a if sign == 1 else (-a if a.could_extract_minus_sign() else None)
                if isinstance(inner, sp.exp):
                    rest = [b for b in args if b is not a and b is not n]
                    return sp.Add(sign * expm1(inner.args[0]), *rest)
        return e

    expr = expr.replace(lambda e: isinstance(e, sp.log) and e.args[0].is_Add and sp.S.One in e.args[0].args,
                        lambda e: log1p(e.args[0] - 1))
    return expr.replace(lambda e: e.is_Add, fix_add)
