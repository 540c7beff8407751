"""The plan of a factored rule (:mod:`symopt.rulebook.factored`: row/column means, row/column
states): read-only passes over the elements, short loops over rows and columns between them,
and one final pass that writes the param and its full-shape states.

Everything is SymPy, as in :mod:`.plan`.  A param is stepped in one of two *layouts*: ``matrix``
(at least 2-D, a stack of ``nb`` matrices ``nr × nc`` over its last two axes; ``factored`` is
true, ``vector`` states do not exist) or ``vector`` (fewer dimensions, read as one ``1 × n``
matrix; ``factored`` is false, ``row``/``col`` states do not exist).  Each layout is planned on
its own from the rule with ``factored`` set, the updates of its missing states dropped.

The updates are substituted in order (each right side in the values the step starts from),
except that a row or column state, once updated, is read back from its buffer.  Every value
has a *kind* -- ``element``, ``row``, ``col``, ``matrix`` (one number per matrix) or
``tensor`` (one number per tensor: reductions over the tensor, per-step scalars) -- and a
*level*, the pass after which it is known:

* a reduction of an element value of level ``k`` (``TensorSum``, ``TensorMean``, ``RowMean``,
  ``ColMean``) is accumulated in float64 by pass ``k + 1`` (level ``k + 1``); a tensor reduction
  one partial per matrix (its workspace slot), the partials summed in matrix order after the pass,
  so that the matrices of a pass can run in any order, or in threads, with the same result;
* a row/column state is updated in the short loop after pass ``k``, ``k`` the level of its
  new value; a ``ColMean`` of a row value (``RowMean`` of a column value) is one number per
  matrix, computed there too;
* the param and full-shape states are written by the final pass, after every reduction.

Per-step scalars (hyperparameters, ``t``) are hoisted into the per-step scalar function;
array-free expressions of tensor reductions become per-tensor scalars, computed in float64 as
soon as their reductions are known.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from ..rulebook.factored import ColMean, RowMean, factored, machine_eps
from ..rulebook.metadata import RuleError
from ..rulebook.reduction import Reduction, TensorMean, TensorSum
from ..rulebook.rule import Rule
from .plan import Hoister, PlanSymbol, _rename_scalars

__all__ = ["FactoredLoop", "FactoredStage", "FactoredLayout", "FactoredPlan", "make_factored_plan", "LAYOUTS"]

#: The layouts of a factored rule: the param's dimensionality decides.
LAYOUTS = ("matrix", "vector")
#: The state shapes a layout does not keep.
_ABSENT = {"matrix": ("vector",), "vector": ("row", "col")}


class FactoredLoop(NamedTuple):
    """One pass over the elements (``i`` rows, ``j`` columns of each matrix ``b``)."""
    temps: tuple    # ((sym, expr), ...): CSE temporaries, in order
    sums: tuple     # ((sym, scope, op, expr), ...): scope "tensor"/"row"/"col", op "sum"/"mean", float64
    stores: tuple   # ((state or param, expr), ...): only in the final pass
    reads: tuple    # symbols loaded: param, grad, states, row/col/matrix values


class FactoredStage(NamedTuple):
    """The short loops after a pass (or before the first): row/col states, per-matrix means, per-tensor scalars."""
    row_stores: tuple      # ((row state, expr of row values and scalars), ...)
    col_stores: tuple      # ((col state, expr), ...)
    means: tuple           # ((matrix sym, "row"|"col", expr), ...): mean over the rows (of a row value) / columns
    tensor_scalars: tuple  # ((sym, expr of reductions and per-step scalars, float64), ...)


class FactoredLayout(NamedTuple):
    name: str              # "matrix" or "vector"
    states: tuple          # the state symbols this layout keeps, in the rule's order
    kinds: dict            # symbol -> "element"/"row"/"col"/"matrix"/"tensor" (loaded values)
    stages: tuple          # stage k runs after pass k (stage 0 before the first pass)
    loops: tuple           # passes 1..K (reductions) then the final pass (stores)
    workspace: dict        # {"row": n row means, "col": n col means, "matrix": n per-matrix values,
                           #  "tensor": n tensor reductions (each one partial per matrix)}
    slots: dict            # row/col/matrix value or tensor reduction -> (workspace part, index)


class FactoredPlan(NamedTuple):
    rule: Rule
    hyper: tuple
    state: tuple
    scalars: tuple         # per-step scalars s0..sk
    scalar_temps: tuple
    scalar_exprs: tuple
    layouts: tuple         # (matrix layout, vector layout)
    op_count: int


_ORDER = {"tensor": 0, "matrix": 1, "row": 2, "col": 2, "element": 3}


def _join(kinds) -> str:
    out = "tensor"
    for k in kinds:
        if {out, k} == {"row", "col"}:
            return "element"
        if _ORDER[k] > _ORDER[out]:
            out = k
    return out


class _Layout:
    """Planner state of one layout (see the module doc)."""

    def __init__(self, rule: Rule, name: str):
        self.rule, self.name = rule, name
        absent = _ABSENT[name]
        self.states = tuple(s for s, spec in rule.state.items() if spec.shape not in absent)
        self.kind = {rule.param: "element", rule.grad: "element"}
        for s in self.states:
            shape = rule.state[s].shape
            self.kind[s] = {"full": "element", "vector": "element"}.get(shape, shape)
        self.level = {s: 0 for s in self.kind}
        self.level[machine_eps] = 0
        self.kind[machine_eps] = "tensor"
        self.reductions: dict = {}   # (type, arg) -> sym
        self.loop_sums: dict = {}    # level -> [(sym, scope, op, arg)]
        self.means: dict = {}        # level -> [(sym, scope, arg)]
        self.row_stores: dict = {}   # level -> [(state, expr)]
        self.col_stores: dict = {}
        self.stores: list = []       # (param/full state, expr in the step's starting values)
        self.workspace = {"row": 0, "col": 0, "matrix": 0, "tensor": 0}
        self.slots: dict = {}        # row/col/matrix value or tensor reduction -> (workspace part, index in it)

    def kind_of(self, expr) -> str:
        return _join(self.kind.get(s, "tensor") for s in expr.free_symbols)

    def level_of(self, expr) -> int:
        return max([self.level.get(s, 0) for s in expr.free_symbols], default=0)

    def _new(self, prefix, kind, level) -> PlanSymbol:
        sym = PlanSymbol(f"{prefix}{len(self.reductions)}", real=True)
        self.kind[sym], self.level[sym] = kind, level
        return sym

    def reduce(self, node) -> sp.Expr:
        """The symbol (or value) standing for the reduction ``node`` of a reduction-free argument."""
        arg = node.args[0]
        kind, level = self.kind_of(arg), self.level_of(arg)
        key = (type(node), arg)
        if key in self.reductions:
            return self.reductions[key]
        if isinstance(node, (TensorSum, TensorMean)):
            if kind != "element":
                raise RuleError(f"{sp.sstr(node)}: a tensor reduction needs a per-element argument here, got a "
                                f"{kind} value")
            sym = self._new("r", "tensor", level + 1)
            self.loop_sums.setdefault(level + 1, []).append((sym, "tensor", node.op, arg))
            self.slots[sym] = ("tensor", self.workspace["tensor"])
            self.workspace["tensor"] += 1
        elif isinstance(node, (RowMean, ColMean)):
            axis = "row" if isinstance(node, RowMean) else "col"
            other = "col" if axis == "row" else "row"
            if self.name == "vector":
                raise RuleError(f"{sp.sstr(node)}: RowMean/ColMean apply to factored params only; write them in the "
                                f"factored branch of a Piecewise(..., (..., factored))")
            if kind in (axis, "matrix", "tensor"):
                return arg  # constant along the axis
            if kind == other:  # ColMean of a row value: one number per matrix
                sym = self._new("m", "matrix", level)
                self.means.setdefault(level, []).append((sym, other, arg))
                self.slots[sym] = ("matrix", self.workspace["matrix"])
                self.workspace["matrix"] += 1
            else:
                sym = self._new("r", axis, level + 1)
                self.loop_sums.setdefault(level + 1, []).append((sym, axis, "mean", arg))
                self.slots[sym] = (axis, self.workspace[axis])
                self.workspace[axis] += 1
        else:
            raise RuleError(f"{sp.sstr(node)}: a factored rule reduces over one tensor or one axis "
                            f"(TensorSum, TensorMean, RowMean, ColMean), not over every tensor")
        self.reductions[key] = sym
        return sym

    def substitute(self, expr, env: dict) -> sp.Expr:
        expr = expr.xreplace({factored: sp.true if self.name == "matrix" else sp.false}).xreplace(env)
        while expr.has(Reduction):
            inner = [n for n in sp.preorder_traversal(expr) if isinstance(n, Reduction) and not n.args[0].has(Reduction)]
            expr = expr.xreplace({n: self.reduce(n) for n in inner})
        return expr

    def plan(self):
        rule = self.rule
        env: dict = {}
        read_old: set = set()
        shaped = {s for s in self.states if self.kind[s] in ("row", "col")}
        for lhs, rhs in rule.updates:
            if lhs in rule.state and lhs not in self.states:
                continue  # a state this layout does not keep
            value = self.substitute(rhs, env)
            missing = value.free_symbols & (set(rule.state) - set(self.states))
            if missing:
                raise RuleError(f"update of {lhs}: reads {sorted(map(str, missing))}, which {self.name} params do "
                                f"not keep (select with Piecewise(..., (..., factored)))")
            if lhs in shaped and lhs in read_old:
                raise RuleError(f"update of {lhs}: a row/column state may be read only after its update")
            read_old |= value.free_symbols & shaped
            if lhs in shaped:
                kind = self.kind_of(value)
                if kind not in (self.kind[lhs], "matrix", "tensor"):
                    raise RuleError(f"update of {lhs}: a {self.kind[lhs]} state needs a {self.kind[lhs]} value, "
                                    f"got a {kind} value")
                level = self.level_of(value)
                (self.row_stores if self.kind[lhs] == "row" else self.col_stores).setdefault(level, []).append(
                    (lhs, value))
                self.level[lhs] = level
                shaped.discard(lhs)
                continue
            env[lhs] = value
            if lhs == rule.param or lhs in self.states:
                self.stores = [(s, e) for s, e in self.stores if s != lhs] + [(lhs, value)]
        return self


def make_factored_plan(rule: Rule) -> FactoredPlan:
    """Plan both layouts of ``rule`` (see the module doc)."""
    found: dict = {}
    planned = [_Layout(rule, name).plan() for name in LAYOUTS]
    pieces = []  # per layout: (layout, hoister, passes, stages) before the scalars are renamed
    exprs: list = []
    for lay in planned:
        arrays = {s for s, k in lay.kind.items() if k != "tensor"}
        tensor_syms = {s for s, k in lay.kind.items() if k == "tensor"}
        hoist = Hoister(arrays, tensor_syms, found=found)
        # Passes 1..nloops accumulate the reductions; the final pass follows the last level anything needs.
        nloops = max([*lay.loop_sums, *lay.row_stores, *lay.col_stores, *lay.means,
                      *(lay.level_of(e) for _, e in lay.stores), 0])
        loops = []
        for k in range(1, nloops + 1):
            sums = [(sym, scope, op, hoist(arg)) for sym, scope, op, arg in lay.loop_sums.get(k, [])]
            loops.append((sums, []))
        loops.append(([], [(s, hoist(e)) for s, e in lay.stores]))
        stages = []
        for k in range(nloops + 1):
            stages.append(([(s, hoist(e)) for s, e in lay.row_stores.get(k, [])],
                           [(s, hoist(e)) for s, e in lay.col_stores.get(k, [])],
                           [(sym, scope, hoist(e)) for sym, scope, e in lay.means.get(k, [])]))
        pieces.append((lay, hoist, loops, stages))
        for sums, stores in loops:
            exprs += [e for *_, e in sums] + [e for _, e in stores]
        for rows_, cols_, means in stages:
            exprs += [e for _, e in rows_] + [e for _, e in cols_] + [e for *_, e in means]
        exprs += list(hoist.tensor_found)
    scalars, scalar_exprs, renamed = _rename_scalars(found, exprs)
    it = iter(renamed)
    layouts = []
    ops = 0
    for lay, hoist, loops, stages in pieces:
        out_loops = []
        for index, (sums, stores) in enumerate(loops):
            sums = [(sym, scope, op, next(it)) for sym, scope, op, _ in sums]
            stores = [(s, next(it)) for s, _ in stores]
            outputs = [e for *_, e in sums] + [e for _, e in stores]
            temps, reduced = sp.cse(outputs, symbols=sp.numbered_symbols(f"_p{index}e", cls=PlanSymbol, real=True),
                                    order="canonical")
            ops += sum(sp.count_ops(e) for _, e in temps) + sum(sp.count_ops(e) for e in reduced)
            sums = tuple((sym, scope, op, e) for (sym, scope, op, _), e in zip(sums, reduced))
            stores = tuple((s, e) for (s, _), e in zip(stores, reduced[len(sums):]))
            used = set().union(*(e.free_symbols for _, e in temps), *(e.free_symbols for e in reduced))
            reads = tuple(sorted((s for s in used if s in lay.kind and lay.kind[s] != "tensor"),
                                 key=sp.default_sort_key))
            out_loops.append(FactoredLoop(tuple(temps), sums, stores, reads))
        out_stages = []
        t_items = sorted(hoist.tensor_found.items(), key=lambda kv: kv[1].name)
        t_renamed = {}
        for rows_, cols_, means in stages:
            rows_ = tuple((s, next(it)) for s, _ in rows_)
            cols_ = tuple((s, next(it)) for s, _ in cols_)
            means = tuple((sym, scope, next(it)) for sym, scope, _ in means)
            out_stages.append([rows_, cols_, means, []])
        for expr, sym in hoist.tensor_found.items():
            t_renamed[sym] = next(it)
        for expr, sym in t_items:
            value = t_renamed[sym]
            level = max([lay.level.get(s, 0) for s in value.free_symbols], default=0)
            out_stages[level][3].append((sym, value))
        layouts.append(FactoredLayout(lay.name, lay.states, dict(lay.kind), tuple(FactoredStage(*(tuple(x) for x in st))
                                                                                 for st in out_stages),
                                      tuple(out_loops), dict(lay.workspace), dict(lay.slots)))
    s_temps, s_reduced = sp.cse(scalar_exprs, symbols=sp.numbered_symbols("_c"), order="canonical")
    return FactoredPlan(rule, tuple(rule.hyper), tuple(rule.state), tuple(scalars), tuple(s_temps), tuple(s_reduced),
                        tuple(layouts), int(ops))
