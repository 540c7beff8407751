"""Counting operations the way the kernel plans do: ``sympy.count_ops`` per statement.

A *statement list* is ``[(symbol, expression), ...]``, the straight-line code a
kernel runs.  Its op count is the sum of ``sympy.count_ops`` over the right-hand
sides: every ``+ - * /``, power, negation and function call counts as one, so a
forward pass and its gradient are measured in the same unit.
"""

from __future__ import annotations

import sympy as sp


def expr_ops(expr) -> int:
    """Operations in one expression (``sympy.count_ops``; numbers and symbols cost 0)."""
    return int(sp.count_ops(expr))


def statement_ops(statements) -> int:
    """Operations in a statement list ``[(symbol, expression), ...]``."""
    return int(sum(sp.count_ops(e) for _, e in statements))


def cse_ops(exprs) -> int:
    """Operations after common-subexpression elimination of ``exprs`` (canonical order)."""
    temps, reduced = sp.cse(list(exprs), symbols=sp.numbered_symbols("_k"), order="canonical")
    return statement_ops(temps) + int(sum(sp.count_ops(e) for e in reduced))
