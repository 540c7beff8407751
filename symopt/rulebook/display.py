"""LaTeX for rules: the update equations with time subscripts, as in the notes.

``m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t``: a state or parameter symbol on a
right-hand side reads ``X_{t-1}`` until it is assigned, ``X_t`` after; the gradient
is ``g_t``; temporaries keep their plain names.  A matrix iteration
(:class:`~symopt.rulebook.matrix.Iterate`) is written out before the update that uses it:
``X_0 = start``, ``X_{j+1} = body(X_j)`` for ``j = 0 … k − 1``; the update reads ``X_k``.
A norm ``√(Σ x²)`` over the tensor (or over every tensor) is written ``‖x‖_F`` (``‖x‖_𝒫``).
"""

from __future__ import annotations

import sympy as sp

from .matrix import Iterate
from .reduction import GlobalSum, TensorSum


class _Norm(sp.Function):
    """Display only: ‖x‖_F (over the tensor) or ‖x‖_𝒫 (over every tensor) for √(Σ x²)."""

    nargs = 2

    def _latex(self, printer, exp=None):
        where = "F" if self.args[1] == 0 else r"\mathcal{P}"
        text = rf"\left\|{printer._print(self.args[0])}\right\|_{{{where}}}"
        return text if exp is None else rf"{text}^{{{printer._print(exp)}}}"


def _is_norm(e) -> bool:
    return (e.is_Pow and e.exp in (sp.S.Half, -sp.S.Half) and isinstance(e.base, (TensorSum, GlobalSum))
            and e.base.args[0].is_Pow and e.base.args[0].exp == 2)


def _readable(expr):
    """``expr`` with every √(Σ x²) written as a norm (for display)."""
    return expr.replace(_is_norm, lambda e: _Norm(e.base.args[0].base, 0 if isinstance(e.base, TensorSum) else 1)
                        ** (1 if e.exp > 0 else -1))


def _base(rule, sym) -> str:
    return rule.latex_names.get(sym.name) or sp.latex(sym)


def _sub(base: str, sub: str) -> str:
    if base.endswith("}") and "_{" in base:
        head, _, tail = base.rpartition("_{")
        return f"{head}_{{{tail[:-1]}, {sub}}}"
    return f"{base}_{{{sub}}}"


def rule_latex(rule) -> str:
    """All update equations of ``rule`` as one LaTeX ``aligned`` block."""
    names = {s: _base(rule, s) for s in [*rule.hyper, *rule.temporaries]}
    timed = [rule.param, *rule.state]
    current = {s: _sub(_base(rule, s), "t-1") for s in timed}
    current[rule.grad] = _sub(_base(rule, rule.grad), "t")
    assigned: set = set()
    lines = []
    for lhs, rhs in rule.updates:
        for it in rhs.atoms(Iterate):
            lines += _iteration_lines(it, {**names, **current})
        body = sp.latex(_readable(rhs), symbol_names={**names, **current})
        if lhs in current:
            arrow = r"\leftarrow" if lhs in assigned or lhs == rule.grad else "="
            current[lhs] = _sub(_base(rule, lhs), "t")
            left = current[lhs]
        else:
            arrow = r"\leftarrow" if lhs in assigned else "="
            left = names[lhs]
        assigned.add(lhs)
        lines.append(f"{left} &{arrow} {body}")
    return r"\begin{aligned}" + r" \\ ".join(lines) + r"\end{aligned}"


def expr_latex(rule, expr) -> str:
    names = {s: _base(rule, s) for s in [*rule.hyper, *rule.temporaries, rule.param, rule.grad, *rule.state]}
    return sp.latex(_readable(expr), symbol_names=names)


def _iteration_lines(it, symbol_names: dict) -> list:
    """``X_0 = start`` and ``X_{j+1} = body(X_j)`` (for j = 0 … count − 1) of an :class:`Iterate`."""
    var = it.var
    step = sp.MatrixSymbol(f"{var.name}_{{j+1}}", *var.shape)
    cur = sp.MatrixSymbol(f"{var.name}_{{j}}", *var.shape)
    count = sp.latex(it.count, symbol_names=symbol_names)
    start = sp.latex(_readable(it.start), symbol_names=symbol_names)
    body = sp.latex(it.body.xreplace({var: cur}), symbol_names=symbol_names)
    return [f"{sp.latex(var)}_{{0}} &= {start}",
            rf"{sp.latex(step)} &= {body}, \quad j = 0, \dots, {count} - 1"]
