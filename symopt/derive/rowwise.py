"""Row-wise functions (softmax, softmax cross-entropy): derivation helpers and kernel plans.

Derivation works on indexed sums, as SymPy writes them: ``Z = IndexedBase("z")``,
``Σ_j exp(z_j)`` is ``Sum(exp(Z[j]), (j, 0, K − 1))`` and ``sympy.diff(…, Z[k])``
produces Kronecker deltas that ``doit()`` turns into ``Piecewise`` terms valid
for ``0 ≤ k < K`` (:func:`in_range` keeps that branch).  :func:`softmax_form`
names ``exp(z_i)/Σ_j exp(z_j)`` as ``p_i``; :func:`stabilize` rewrites the sum
as ``e^m · S`` with ``m = max_j z_j`` and ``S = Σ_j exp(z_j − m)`` (log-sum-exp:
nothing overflows); :func:`sums_to_reductions` turns the remaining sums into
row reductions.

:func:`plan_rowwise` hoists what depends only on the row (reductions,
hyperparameters, the scale) out of the element loop, CSE-style, and returns the
ordered steps a kernel runs per row.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from .ops import statement_ops

__all__ = ["RowPlan", "in_range", "plan_rowwise", "softmax_form", "stabilize", "sums_to_reductions"]


def in_range(expr):
    """Replace each ``Piecewise((e, 0 ≤ k ≤ K−1), (0, True))`` from ``Sum.doit()`` by ``e``."""
    def pick(pw):
        e, cond = pw.args[0]
        if len(pw.args) == 2 and pw.args[1].cond == sp.true and cond != sp.true and pw.args[1].expr.doit() == 0:
            return e
        return pw
    return expr.replace(lambda e: isinstance(e, sp.Piecewise), pick)


def softmax_form(expr, Z, total, P, S):
    """Write ``exp(Z[i])`` as ``P[i] · S`` and ``total`` (= Σ_j exp(Z[j])) as ``S``, then simplify."""
    e = expr.xreplace({total: S})
    e = e.replace(lambda a: isinstance(a, sp.exp) and isinstance(a.args[0], sp.Indexed) and a.args[0].base == Z,
                  lambda a: P[a.args[0].indices[0]] * S)
    e = e.replace(lambda a: isinstance(a, sp.Sum), lambda a: sp.Sum(sp.simplify(a.function), *a.limits))
    return sp.factor_terms(sp.simplify(e))


def stabilize(expr, total, m, S):
    """Rewrite ``Σ_j exp(z_j)`` as ``e^m · S`` and simplify logs and powers (log-sum-exp form)."""
    e = expr.xreplace({total: sp.exp(m) * S})
    e = sp.expand_log(e, force=True)
    return sp.powsimp(e)


def sums_to_reductions(expr, index_map: dict, names):
    """Replace each ``Sum(f(i), (i, 0, K−1))`` by a new symbol; return ``(expr, [(sym, "sum", f_j)])``.

    ``index_map`` maps ``IndexedBase`` -> element symbol; ``names`` yields the new symbols.
    """
    reductions = []

    def lift(s):
        (i, _, _), = s.limits
        f = s.function.replace(lambda a: isinstance(a, sp.Indexed) and a.indices == (i,),
                               lambda a: index_map[a.base])
        sym = next(names)
        reductions.append((sym, "sum", f))
        return sym
    out = expr.replace(lambda a: isinstance(a, sp.Sum), lift)
    return out, reductions


class RowPlan(NamedTuple):
    spec: object
    steps: tuple       # ("reduce", sym, op, expr) | ("row", sym, expr) | ("elements", expr)
    value: sp.Expr | None   # per-row value added to the kernel's total (losses)
    ops: int           # operations of one element of each pass plus the row temporaries


class _Hoist:
    """Replace maximal sub-expressions free of element symbols by row temporaries."""

    def __init__(self, element_syms: set, prefix: str):
        self.element_syms = element_syms
        self.found: dict = {}
        self.order: list = []
        self.prefix = prefix

    def __call__(self, e):
        if e.is_Atom:
            return e
        if not (e.free_symbols & self.element_syms):
            if e not in self.found:
                s = sp.Symbol(f"{self.prefix}{len(self.found)}", real=True)
                self.found[e] = s
                self.order.append((s, e))
            return self.found[e]
        if e.is_Add or e.is_Mul:
            fixed = [a for a in e.args if not a.is_Number and not (a.free_symbols & self.element_syms)]
            rest = [self(a) for a in e.args if a.is_Number or a.free_symbols & self.element_syms]
            if fixed:
                rest.append(self(e.func(*fixed)))
            return e.func(*rest)
        return e.func(*[self(a) for a in e.args])


def plan_rowwise(spec, kernel: str, extra=()) -> RowPlan:
    """Steps of one row-wise kernel: ``kernel`` is ``"value"``, ``"value_and_grad"``, ``"forward"``
    or ``"backward"``; ``extra`` are factors applied to the element output (e.g. the scale)."""
    elem = {s for s in (spec.element, spec.onehot, spec.upstream, spec.output) if s is not None}
    hoist = _Hoist(elem, "r")
    steps = []
    value = None
    if kernel in ("value", "value_and_grad", "forward"):
        for sym, op, e in spec.forward_reductions:
            steps.append(("reduce", sym, op, e))
    if kernel == "backward":
        for sym, op, e in spec.grad_reductions:
            steps.append(("reduce", sym, op, e))
    if kernel in ("value", "value_and_grad"):
        value = spec.forward_value
    if kernel == "forward":
        out = spec.forward_output
    elif kernel in ("value_and_grad", "backward"):
        out = spec.grad_output
    else:
        out = None
    if out is not None:
        out = sp.Mul(*extra, out)
        out = hoist(out)
        for s, e in hoist.order:
            steps.append(("row", s, e))
        steps.append(("elements", out))
    ops = statement_ops([(x[1], x[3]) for x in steps if x[0] == "reduce"])
    ops += statement_ops([(x[1], x[2]) for x in steps if x[0] == "row"])
    ops += statement_ops([(None, x[1]) for x in steps if x[0] == "elements"])
    return RowPlan(spec=spec, steps=tuple(steps), value=value, ops=int(ops))
