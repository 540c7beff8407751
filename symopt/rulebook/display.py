"""LaTeX for rules: the update equations with time subscripts, as in the notes.

``m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t``: a state or parameter symbol on a
right-hand side reads ``X_{t-1}`` until it is assigned, ``X_t`` after; the gradient
is ``g_t``; temporaries keep their plain names.
"""

from __future__ import annotations

import sympy as sp


def base_latex(rule, sym) -> str:
    """A symbol's LaTeX name: the rule's ``latex_names`` entry, else SymPy's."""
    return rule.latex_names.get(sym.name) or sp.latex(sym)


def subscripted(base: str, sub: str) -> str:
    """``base`` with ``sub`` added to its subscript (``\\beta_{1}``, ``t`` -> ``\\beta_{1, t}``)."""
    if base.endswith("}") and "_{" in base:
        head, _, tail = base.rpartition("_{")
        return f"{head}_{{{tail[:-1]}, {sub}}}"
    return f"{base}_{{{sub}}}"


def update_rows(rule) -> list:
    """One ``(left, arrow, rhs, names)`` per update: the left side's LaTeX (``m_{t}``), ``=`` for a
    first assignment and ``\\leftarrow`` for a later one, the right side and the LaTeX name of every
    symbol it reads at that point (``m_{t-1}`` before ``m`` is assigned, ``m_{t}`` after)."""
    names = {s: base_latex(rule, s) for s in [*rule.hyper, *rule.temporaries]}
    timed = [rule.param, *rule.state]
    current = {s: subscripted(base_latex(rule, s), "t-1") for s in timed}
    current[rule.grad] = subscripted(base_latex(rule, rule.grad), "t")
    assigned: set = set()
    rows = []
    for lhs, rhs in rule.updates:
        seen = {**names, **current}
        if lhs in current:
            arrow = r"\leftarrow" if lhs in assigned or lhs == rule.grad else "="
            current[lhs] = subscripted(base_latex(rule, lhs), "t")
            left = current[lhs]
        else:
            arrow = r"\leftarrow" if lhs in assigned else "="
            left = names[lhs]
        assigned.add(lhs)
        rows.append((left, arrow, rhs, seen))
    return rows


def rule_latex(rule) -> str:
    """All update equations of ``rule`` as one LaTeX ``aligned`` block."""
    lines = [f"{left} &{arrow} {sp.latex(rhs, symbol_names=names)}" for left, arrow, rhs, names in update_rows(rule)]
    return r"\begin{aligned}" + r" \\ ".join(lines) + r"\end{aligned}"


def expr_latex(rule, expr) -> str:
    names = {s: base_latex(rule, s) for s in [*rule.hyper, *rule.temporaries, rule.param, rule.grad, *rule.state]}
    return sp.latex(expr, symbol_names=names)
