"""The plan stage of the kernels that compute gradients: ``symopt.nn`` losses and activations, and
:func:`symopt.gradient` expressions.

The derivation stage (:mod:`symopt.derive`) supplies the math: the candidate forms of an
elementwise derivative and their check points, the log-sum-exp forms of a row-wise function,
the reverse-mode sweeps of an expression.  This module decides what the kernels run, still as
SymPy (no strings):

* **Elementwise** (:func:`plan_elementwise`): the fewest-ops *accurate* form of the derivative
  (:func:`cheapest`), then the CSE'd kernel bodies ``value`` (ℓ), ``value_and_grad`` (ℓ and
  ``scale · ∂ℓ/∂z``), ``forward`` (f) and ``backward`` (``g · f′``).  A candidate is accurate
  when, printed exactly as the float64 kernel runs it
  (:func:`symopt.codegen.printers.float64_function`), it is finite at every check point and
  ``|candidate − reference| ≤ tol · max(|reference|, 1)`` (tol = 1e-12) against a
  high-precision evaluation (:func:`~symopt.derive.mpeval.mp_eval`, 1100 digits, exact
  inputs) of the textbook derivative: relative error above 1, absolute below.  That rejects
  forms that overflow (``eˣ/(eˣ+1)`` at x = 1000 is inf/inf) or lose digits, and keeps the
  cheap output-based forms PyTorch also uses (``σ′ = σ(1 − σ)``).  Ties go to the earlier
  candidate, so the raw ``sympy.diff`` result is kept unless a rewrite is strictly cheaper.
* **Row-wise** (:func:`plan_rowwise`): the passes of each kernel over a row -- the row
  reductions, then the row temporaries (maximal sub-expressions free of element symbols,
  hoisted out of the element loop), then the CSE'd element pass.
* **Term programs** (:func:`term_program`): the top-level sum of a ``symopt.gradient``
  expression split into terms and grouped by shape, one reverse sweep
  (:func:`~symopt.derive.reverse.reverse_sweep`) per shape and index/constant tables per
  group, so the generated code stays small (see :class:`TermProgram`).

Operations are counted as ``sympy.count_ops`` per statement (every ``+ − × ÷``, power,
negation and function call counts one), so a forward pass and its gradient are measured in
the same unit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import sympy as sp

from ..derive.elementwise import Derivation, derivation
from ..derive.mpeval import mp_eval
from ..derive.reverse import ReverseSweep, check_gradient_input, constant, postorder, reverse_sweep
from ..derive.simplify import fold_constants
from .printers import float64_function

__all__ = ["SCALE", "TOL", "UPSTREAM", "Candidate", "ElementPlan", "RowKernel", "RowPlan", "TermGroup",
           "TermProgram", "cheapest", "plan_elementwise", "plan_rowwise", "term_program"]

#: The per-call scale of a loss gradient (1/n for a mean) and the upstream gradient of a backward pass.
SCALE = sp.Symbol("scale", real=True)
UPSTREAM = sp.Symbol("g", real=True)

#: Accuracy a derivative form must reach at every check point (see the module doc).
TOL = 1e-12


# ----------------------------------------------------------------------------- operation counts
def expr_ops(expr) -> int:
    """Operations in one expression (``sympy.count_ops``; numbers and symbols cost 0)."""
    return int(sp.count_ops(expr))


def statement_ops(statements) -> int:
    """Operations in a statement list ``[(symbol, expression), ...]`` (straight-line code)."""
    return int(sum(sp.count_ops(e) for _, e in statements))


def cse_ops(exprs) -> int:
    """Operations after common-subexpression elimination of ``exprs`` (canonical order)."""
    temps, reduced = sp.cse(list(exprs), symbols=sp.numbered_symbols("_k"), order="canonical")
    return statement_ops(temps) + int(sum(sp.count_ops(e) for e in reduced))


# ----------------------------------------------------------------------------- elementwise
class Candidate(NamedTuple):
    label: str
    expr: sp.Expr
    ops: int
    max_err: float       # max over points of |c − ref| / max(|ref|, 1); inf if not finite
    accepted: bool


class ElementPlan(NamedTuple):
    spec: object
    forward: sp.Expr          # the kernel form of ℓ or f
    derivative: sp.Expr       # the chosen form of ∂ℓ/∂z or f′ (may use the output y), as the kernel runs it
    display: sp.Expr          # the same form with exact constants (for LaTeX)
    raw: sp.Expr              # sympy.diff of the kernel form, before simplification
    reference: sp.Expr        # sympy.diff of the textbook form
    candidates: tuple         # every Candidate considered (label, expr, ops, max_err, accepted)
    chosen: str               # label of the chosen candidate
    forward_ops: int
    derivative_ops: int
    raw_ops: int
    bodies: dict              # kernel name -> (temps, outputs), CSE'd


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


def _cse(exprs):
    temps, reduced = sp.cse(list(exprs), symbols=sp.numbered_symbols("_e"), order="canonical")
    return tuple(temps), tuple(reduced)


def _element_plan(spec, d: Derivation, best: Candidate, considered: list) -> ElementPlan:
    f = fold_constants(spec.kernel_expr)
    if spec.kind == "loss":
        bodies = {"value": _cse([f]), "value_and_grad": _cse([f, SCALE * best.expr])}
    else:
        bodies = {"forward": _cse([f]), "backward": _cse([UPSTREAM * best.expr])}
    return ElementPlan(spec=spec, forward=f, derivative=best.expr, display=d.display[best.label], raw=d.raw,
                       reference=d.reference, candidates=tuple(considered), chosen=best.label,
                       forward_ops=cse_ops([f]), derivative_ops=best.ops, raw_ops=cse_ops([fold_constants(d.raw)]),
                       bodies=bodies)


def plan_elementwise(spec) -> ElementPlan:
    """Derive an elementwise loss or activation (:func:`~symopt.derive.elementwise.derivation`),
    choose the cheapest accurate form of its derivative and CSE its kernel bodies."""
    d = derivation(spec)
    best, considered = cheapest(d.candidates, d.reference, d.symbols, d.points)
    return _element_plan(spec, d, best, considered)


# ----------------------------------------------------------------------------- row-wise
class RowKernel(NamedTuple):
    steps: tuple       # ("reduce", sym, op, expr) | ("row", sym, expr) | ("elements", temps, expr), in order
    value: sp.Expr | None   # per-row value added to the kernel's total (losses)
    scaled: bool       # the element output is multiplied by SCALE
    ops: int           # operations of one element of each pass plus the row temporaries


class RowPlan(NamedTuple):
    spec: object
    kernels: dict      # kernel name -> RowKernel, in the module's order


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


def _row_kernel(spec, kernel: str, scaled: bool) -> RowKernel:
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
    ops = statement_ops([(x[1], x[3]) for x in steps])
    if out is not None:
        out = hoist(SCALE * out if scaled else out)
        ops += statement_ops(hoist.order) + expr_ops(out)
        steps += [("row", s, e) for s, e in hoist.order]
        temps, (reduced,) = _cse([out])
        steps.append(("elements", temps, reduced))
    return RowKernel(steps=tuple(steps), value=value, scaled=scaled, ops=int(ops))


def plan_rowwise(spec) -> RowPlan:
    """The kernels of a row-wise loss (``value``; ``value_and_grad``, its output scaled by
    :data:`SCALE`) or activation (``forward``, ``backward``), each as the steps it runs per row:
    the row reductions, then the row temporaries (what depends only on the row, hoisted out of
    the element loop), then the element pass (CSE'd)."""
    layout = ([("value", False), ("value_and_grad", True)] if spec.kind == "loss"
              else [("forward", False), ("backward", False)])
    return RowPlan(spec=spec, kernels={name: _row_kernel(spec, name, scaled) for name, scaled in layout})


# ----------------------------------------------------------------------------- symopt.gradient
class TermGroup(NamedTuple):
    key: str                 # canonical text of the template (``sympy.srepr``)
    template: sp.Expr        # the term in slot symbols p0.. (inputs) and c0.. (constants)
    inputs: tuple            # input slot symbols
    params: tuple            # constant slot symbols
    sweep: ReverseSweep      # forward and reverse sweep of the template
    forward_ops: int         # ops of the forward sweep (the cost of one term's value)
    reverse_ops: int         # ops of the reverse sweep and the gradient outputs
    index: np.ndarray        # (terms, len(inputs)) int64: position in wrt of each input slot
    consts: np.ndarray       # (terms, len(params)) float64: value of each constant slot
    exact_consts: tuple      # the constants of each term as SymPy numbers (for display)


class TermProgram(NamedTuple):
    """The value-and-gradient program of one expression, grouped by term shape.

    A scalar objective in many symbols is usually a sum of terms of a few shapes: an
    N-dimensional Rosenbrock is ``Σ 100 (x_{i+1} − x_i²)² + (1 − x_i)²`` (two shapes), a
    least-squares model or a log-likelihood is one shape per data point.  Written as
    straight-line code, N = 1000 would be ~17 000 statements, which numba takes minutes to
    compile.  Instead:

    * the top-level sum is split into terms (terms sharing a sub-expression stay together,
      so the DAG's sharing is kept); each term gets a *shape key*: its tree with every input
      symbol replaced by a slot (``p0, p1, …`` in order of first appearance) and every number
      in a sum or product (other than ±1) by a constant slot (``c0, c1, …``); exponents and
      function arguments stay literal;
    * terms with the same key form a :class:`TermGroup`: one template term (in ``p`` and
      ``c``), its reverse sweep, an index table (which input fills each ``p`` slot, one row
      per term) and a constant table;
    * the generated kernel runs one loop per group over its table, adding each term's value
      to ``f`` and scattering its local gradient into ``∇f``.

    The generated module depends only on the shapes, so every Rosenbrock from N = 2 to
    N = 10⁶ shares one compiled kernel; the tables are built at call set-up.
    """

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
    """Validate ``expr``/``wrt`` (:func:`~symopt.derive.reverse.check_gradient_input`) and build
    the grouped reverse-mode program."""
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
        sweep = reverse_sweep(tmpl, inputs, params)
        index = np.asarray(entry["rows"], dtype=np.int64).reshape(len(entry["rows"]), len(inputs))
        consts = np.asarray([[float(c) for c in row] for row in entry["consts"]],
                            dtype=np.float64).reshape(len(entry["rows"]), len(params))
        groups.append(TermGroup(
            key=sp.srepr(tmpl), template=tmpl, inputs=inputs, params=params, sweep=sweep,
            forward_ops=statement_ops(sweep.forward),
            reverse_ops=statement_ops(sweep.reverse) + int(sum(expr_ops(g) for g in sweep.grads)),
            index=index, consts=consts, exact_consts=tuple(tuple(row) for row in entry["consts"])))
    groups.sort(key=lambda g: g.key)
    n_terms = len(terms) + (1 if offset != 0 else 0)
    forward = sum(len(g.index) * g.forward_ops for g in groups) + max(n_terms - 1, 0)
    reverse = sum(len(g.index) * (g.reverse_ops + len(g.inputs)) for g in groups)
    return TermProgram(expr=expr, wrt=wrt, offset=float(offset), groups=tuple(groups),
                       forward_ops=int(forward), reverse_ops=int(reverse), n_terms=n_terms)
