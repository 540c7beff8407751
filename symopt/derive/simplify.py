"""Rewrites of derivative expressions that keep their value and lose no accuracy.

* :func:`pin_heaviside`: ``Heaviside(u)`` -> ``Heaviside(u, h0)`` (the step at 0 pinned);
* :func:`fold_constants`: numeric sub-expressions folded into one 30-digit Float;
* :func:`use_expm1_log1p`: ``eᵘ − 1 → expm1(u)``, ``log(1 + u) → log1p(u)``.

Which rewritten form a kernel runs is decided by the plan stage
(:func:`symopt.codegen.plan_gradients.cheapest`: the fewest operations among the accurate forms).
"""

from __future__ import annotations

import sympy as sp

__all__ = ["fold_constants", "pin_heaviside", "use_expm1_log1p"]


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
