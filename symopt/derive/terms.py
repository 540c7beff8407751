"""Grouping the terms of a large sum by shape, so generated code stays small.

A scalar objective in many symbols is usually a sum of terms of a few shapes: an
N-dimensional Rosenbrock is ``Σ 100 (x_{i+1} − x_i²)² + (1 − x_i)²`` (two shapes),
a least-squares model or a log-likelihood is one shape per data point.  Written
as straight-line code, N = 1000 would be ~17 000 statements, which numba takes
minutes to compile.  Instead:

* the top-level sum is split into terms (terms sharing a sub-expression stay
  together, so the DAG's sharing is kept); each term gets a *shape key*: its tree
  with every input symbol replaced by a slot (``p0, p1, …`` in order of first
  appearance) and every number in a sum or product (other than ±1) by a constant
  slot (``c0, c1, …``); exponents and function arguments stay literal;
* terms with the same key form a group: one template term (in ``p`` and ``c``),
  its reverse sweep (:func:`~symopt.derive.reverse.reverse_sweep`, reverse-mode
  over the template's DAG), an index table (which input fills each ``p`` slot,
  one row per term) and a constant table;
* the generated kernel runs one loop per group over its table, adding each
  term's value to ``f`` and scattering its local gradient into ``∇f``.

The generated module depends only on the shapes, so every Rosenbrock from N = 2
to N = 10⁶ shares one compiled kernel; the tables are built at call set-up.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import sympy as sp

from .reverse import SweepPlan, check_gradient_input, constant, postorder, reverse_sweep

__all__ = ["TermGroup", "TermProgram", "term_program"]


class TermGroup(NamedTuple):
    key: str                 # canonical text of the template (``sympy.srepr``)
    template: sp.Expr        # the term in slot symbols p0.. (inputs) and c0.. (constants)
    inputs: tuple            # input slot symbols
    params: tuple            # constant slot symbols
    plan: SweepPlan          # forward and reverse sweep of the template
    index: np.ndarray        # (terms, len(inputs)) int64: position in wrt of each input slot
    consts: np.ndarray       # (terms, len(params)) float64: value of each constant slot
    exact_consts: tuple      # the constants of each term as SymPy numbers (for display)


class TermProgram(NamedTuple):
    expr: sp.Expr
    wrt: tuple
    offset: float            # sum of the numeric terms
    groups: tuple            # TermGroup, sorted by key
    forward_ops: int         # ops to evaluate f: every term's forward sweep + the sum
    reverse_ops: int         # extra ops for ∇f: reverse sweeps + one add per scattered entry
    n_terms: int

    @property
    def gradient_ops(self) -> int:
        return self.forward_ops + self.reverse_ops

    @property
    def ratio(self) -> float:
        """Cost of f and ∇f together over the cost of f alone."""
        return self.gradient_ops / max(self.forward_ops, 1)


def _split(expr) -> tuple:
    """``(terms, numeric offset)``; terms that share a sub-expression are merged into one.

    A node used by two terms (``s`` in ``exp(−s) sin(s) + log(1 + s)²``) must be
    computed once, so such terms form one term whose DAG keeps the sharing.
    Shared nodes of a single operation (a negation) are cheaper to repeat and
    do not merge terms.
    """
    if not expr.is_Add:
        return (expr,), sp.S.Zero
    offset = sum((a for a in expr.args if a.is_number), sp.S.Zero)
    terms = [a for a in expr.args if not a.is_number]
    parent = list(range(len(terms)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict = {}
    for i, term in enumerate(terms):
        for node in postorder(term):
            j = owner.setdefault(node, i)
            if j != i and find(j) != find(i) and sp.count_ops(node) >= 2:
                parent[find(i)] = find(j)
    groups: dict = {}
    for i, term in enumerate(terms):
        groups.setdefault(find(i), []).append(term)
    merged = tuple(members[0] if len(members) == 1 else sp.Add(*members) for members in groups.values())
    return merged, offset


def _is_slot_number(e, in_sum_or_product: bool) -> bool:
    return in_sum_or_product and e.is_number and e != 1 and e != -1


def _shape(term, position: dict):
    """(key tuple, input positions in slot order, constants in slot order)."""
    slots: dict = {}
    consts: list = []

    def walk(e, arith: bool):
        if e.is_Symbol:
            if e not in slots:
                slots[e] = len(slots)
            return ("p", slots[e])
        if e.is_number:
            if _is_slot_number(e, arith):
                consts.append(e)
                return ("c",)
            return ("n", sp.srepr(e))
        inner = e.func in (sp.Add, sp.Mul)
        return (e.func.__name__, *(walk(a, inner) for a in e.args))

    key = walk(term, False)
    order = sorted(slots, key=slots.get)
    return key, [position[s] for s in order], consts


def _template(term):
    """The term with input slots p0.. and constant slots c0.. (same walk order as :func:`_shape`)."""
    slots: dict = {}
    nconst = [0]

    def build(e, arith: bool):
        if e.is_Symbol:
            if e not in slots:
                slots[e] = sp.Symbol(f"p{len(slots)}")
            return slots[e]
        if e.is_number:
            if _is_slot_number(e, arith):
                c = sp.Symbol(f"c{nconst[0]}")
                nconst[0] += 1
                return c
            return constant(e)
        inner = e.func in (sp.Add, sp.Mul)
        return e.func(*(build(a, inner) for a in e.args))

    tmpl = build(term, False)
    inputs = tuple(sp.Symbol(f"p{i}") for i in range(len(slots)))
    params = tuple(sp.Symbol(f"c{i}") for i in range(nconst[0]))
    return tmpl, inputs, params


def term_program(expr, wrt) -> TermProgram:
    """Validate ``expr``/``wrt`` and build the grouped reverse-mode program."""
    expr, wrt = check_gradient_input(expr, wrt)
    position = {s: i for i, s in enumerate(wrt)}
    terms, offset = _split(expr)
    by_key: dict = {}
    for term in terms:
        key, idx, consts = _shape(term, position)
        entry = by_key.get(key)
        if entry is None:
            by_key[key] = entry = {"first": term, "rows": [], "consts": []}
        entry["rows"].append(idx)
        entry["consts"].append(consts)
    groups = []
    for entry in by_key.values():
        tmpl, inputs, params = _template(entry["first"])
        plan = reverse_sweep(tmpl, inputs, params)
        index = np.asarray(entry["rows"], dtype=np.int64).reshape(len(entry["rows"]), len(inputs))
        consts = np.asarray([[float(c) for c in row] for row in entry["consts"]],
                            dtype=np.float64).reshape(len(entry["rows"]), len(params))
        groups.append(TermGroup(sp.srepr(tmpl), tmpl, inputs, params, plan, index, consts,
                                tuple(tuple(row) for row in entry["consts"])))
    groups.sort(key=lambda g: g.key)
    n_terms = len(terms) + (1 if offset != 0 else 0)
    forward = sum(len(g.index) * g.plan.forward_ops for g in groups) + max(n_terms - 1, 0)
    reverse = sum(len(g.index) * (g.plan.reverse_ops + len(g.inputs)) for g in groups)
    return TermProgram(expr=expr, wrt=wrt, offset=float(offset), groups=tuple(groups),
                       forward_ops=int(forward), reverse_ops=int(reverse), n_terms=n_terms)
