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
from .preconditioned import Preconditioned, RMSNormalized, n_axes
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
    """All update equations of ``rule`` as one LaTeX ``aligned`` block.  A matrix state reads
    ``L_{t-1}`` until its update, ``L_t`` after; states updated at the end of the step are written
    after the last update."""
    lines, current, at_end, bases = [], {}, [], {}
    for left, arrow, rhs, names in update_rows(rule):
        for it in rhs.atoms(Iterate):
            lines += _iteration_lines(it, names)
        names = {**names, n_axes: "n"}
        for node in rhs.atoms(Preconditioned):
            if node.every_axis:     # per axis i: the unfolding G_(i), the states L_i, the mode product ×_i
                current[node.var] = sp.MatrixSymbol(f"{sp.latex(node.var)}_{{(i)}}", *node.var.shape)
                for st in node.states:
                    bases[st.sym] = sp.MatrixSymbol(subscripted(sp.latex(st.sym), "i"), *st.sym.shape)
            for st in node.states:
                current.setdefault(st.sym, _timed(bases.get(st.sym, st.sym), "t-1"))
            lines.append(f"{sp.latex(node.var)} &= {sp.latex(_readable(node.start), symbol_names=names)}")
            lines += _state_lines([st for st in node.states if not st.at_end], current, names, bases)
            at_end += [st for st in node.states if st.at_end]
            value = node.value.xreplace(current)
            if node.every_axis:
                norm = value if isinstance(value, RMSNormalized) else None
                factor = sp.latex((norm.arg if norm is not None else value).args[0])
                value = sp.Symbol(rf"{sp.latex(node.var)} \times_{{i}} {factor} \ (i = 0, \dots, n - 1)")
                if norm is not None:
                    value = RMSNormalized(sp.MatrixSymbol(sp.latex(value), *node.var.shape), norm.eps, norm.when)
            rhs = rhs.xreplace({node: _MatrixValue(value)})
        lines.append(f"{left} &{arrow} {sp.latex(_readable(rhs), symbol_names=names)}")
    if at_end:
        lines += _state_lines(at_end, current, {**names, n_axes: "n"}, bases)
    return r"\begin{aligned}" + r" \\ ".join(lines) + r"\end{aligned}"


def expr_latex(rule, expr) -> str:
    names = {s: base_latex(rule, s) for s in [*rule.hyper, *rule.temporaries, rule.param, rule.grad, *rule.state]}
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


class _MatrixValue(sp.Expr):
    """Display only: the value of a :class:`Preconditioned` node, its states at step t."""

    is_commutative = True

    def _latex(self, printer, exp=None):
        text = printer._print(self.args[0])
        return text if exp is None else rf"\left({text}\right)^{{{printer._print(exp)}}}"


def _timed(sym, sub: str):
    """The matrix ``sym`` named with subscript ``sub`` (display only)."""
    return sp.MatrixSymbol(subscripted(sp.latex(sym), sub), *sym.shape)


def _state_lines(states, current: dict, symbol_names: dict, bases: dict) -> list:
    """Each matrix state's update (``L_t = L_{t-1} + G Gᵀ``, ``H_L = L_t^{-1/4}`` with its
    condition), reading the other states' current names; ``current`` is updated.  ``bases``: the
    per-axis names (``L_i``) of an every-axis node's states."""
    lines = []
    for st in states:
        rhs = sp.latex(st.update.xreplace(current), symbol_names=symbol_names)
        cond = "" if st.when == sp.true else rf", \quad \text{{if }} {sp.latex(st.when, symbol_names=symbol_names)}"
        current[st.sym] = _timed(bases.get(st.sym, st.sym), "t")
        lines.append(f"{sp.latex(current[st.sym])} &= {rhs}{cond}")
    return lines
