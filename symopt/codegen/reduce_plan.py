"""The plan of a rule with reductions (``TensorSum``, ``GlobalSum``...).

A rule whose updates contain :mod:`~symopt.rulebook.reduction` nodes runs in
passes over the arrays:

* one or more **reduction passes** (read-only): each accumulates, in float64, the
  elementwise arguments of the reductions of one *stage* per chunk, then per
  tensor (and over all tensors for global ones); a *finalize* step then computes
  that stage's **per-tensor scalars** -- the array-free sub-expressions that
  contain reduction results, such as ``min(1, c / (√S + ε))`` or a trust ratio --
  once per tensor in float64.  A reduction whose argument contains another
  reduction belongs to a later stage (one more pass);
* the usual **elementwise pass**, which reads the per-tensor scalars as extra
  columns of its scalar table (one row per tensor instead of one per group).

Three levels of hoisting: sub-expressions of hyperparameters and ``t`` only
become per-step scalars (``s_k``, shared by every tensor and every pass), those
that also contain reduction results become per-tensor scalars, the rest is
per-element code.  Everything stays SymPy; :mod:`.reduce_render` prints it.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from ..rulebook.reduction import Reduction
from ..rulebook.rule import Rule
from .plan import KernelPlan, _Hoister, _rename_scalars, assemble_plan, substitute_updates


class PlanSymbol(sp.Symbol):
    """A symbol made by the planner (reduction results, per-tensor scalars).

    Its own class, so it never equals a rule's symbol of the same name.
    """


class ReductionSpec(NamedTuple):
    sym: sp.Symbol          # the reduction's value (a per-tensor float64)
    scope: str              # "tensor" | "global"
    op: str                 # "sum" | "mean"
    stage: int              # pass in which its argument is accumulated
    arg: sp.Expr            # elementwise argument (after hoisting): arrays, s_k, earlier tensor scalars


class ReduceStage(NamedTuple):
    index: int
    reductions: tuple       # indices into ReductionInfo.reductions accumulated in this pass
    element_temps: tuple    # ((sym, expr), ...) CSE temporaries of the accumulated arguments
    element_exprs: tuple    # one expression per reduction of this stage
    reads: tuple            # array symbols the pass reads
    tensor_temps: tuple     # ((sym, expr), ...) CSE temporaries of the finalize step
    tensor_outputs: tuple   # ((tensor scalar sym, expr), ...) computed after this pass


class ReductionInfo(NamedTuple):
    reductions: tuple       # ReductionSpec per reduction, in order of first appearance (inner first)
    tensor_scalars: tuple   # per-tensor scalar symbols, in scal-column order after the per-step scalars
    stages: tuple           # ReduceStage per pass


def _extract(outputs, rule: Rule):
    """Replace every reduction node (inner first) by a PlanSymbol; returns (outputs, specs)."""
    table: dict = {}
    specs: list = []

    def walk(e):
        if isinstance(e, Reduction):
            arg = walk(e.args[0])
            key = (type(e), arg)
            if key not in table:
                inner = [s for s in specs if s["sym"] in arg.free_symbols]
                stage = 1 + max((s["stage"] for s in inner), default=-1)
                sym = PlanSymbol(f"r{len(specs)}", real=True)
                specs.append({"sym": sym, "scope": e.scope, "op": e.op, "stage": stage, "arg": arg})
                table[key] = sym
            return table[key]
        if not e.args or not e.has(Reduction):
            return e
        return e.func(*[walk(a) for a in e.args])

    new = [(tgt, walk(e)) for tgt, e in outputs]
    return new, specs


class _TwoLevelHoister(_Hoister):
    """Hoists array-free sub-expressions: per-step scalars, or per-tensor ones if they hold reduction results."""

    def __init__(self, arrays: set, rsyms: set):
        super().__init__(arrays, set())
        self.rsyms = rsyms
        self.inner = _Hoister(set(rsyms), set())
        self.inner.found = self.found            # per-step scalars are shared by both levels
        self.tensor_found: dict = {}

    def scalar(self, e):
        if e.is_Boolean or not (e.free_symbols & self.rsyms):
            return super().scalar(e)
        inner = self.inner(e)
        if inner not in self.tensor_found:
            self.tensor_found[inner] = PlanSymbol(f"u{len(self.tensor_found)}", real=True)
        return self.tensor_found[inner]


def make_reduction_plan(rule: Rule) -> KernelPlan:
    """The :class:`KernelPlan` of a rule with reductions (``plan.reduction`` holds the passes)."""
    outputs, specs = _extract(substitute_updates(rule), rule)
    arrays = {rule.param, rule.grad, *rule.state}
    rsyms = {s["sym"] for s in specs}
    hoist = _TwoLevelHoister(arrays, rsyms)
    out_exprs = [hoist(e) for _, e in outputs]
    arg_exprs = [hoist(s["arg"]) for s in specs]
    # Per-tensor scalar expressions, in terms of reduction results and per-step dummies.
    t_items = list(hoist.tensor_found.items())
    t_exprs = [expr for expr, _ in t_items]

    n_out, n_arg = len(out_exprs), len(arg_exprs)
    scalars, scalar_exprs, renamed = _rename_scalars(hoist.found, out_exprs + arg_exprs + t_exprs)
    out_exprs, arg_exprs, t_exprs = renamed[:n_out], renamed[n_out:n_out + n_arg], renamed[n_out + n_arg:]

    # Stage of each tensor scalar: after the last reduction it reads.
    stage_of = {s["sym"]: s["stage"] for s in specs}
    t_stage = [max(stage_of[r] for r in e.free_symbols & rsyms) for e in t_exprs]
    # Canonical column order: by stage, then by expression.
    order = sorted(range(len(t_items)), key=lambda k: (t_stage[k], sp.default_sort_key(t_exprs[k])))
    rename = {}
    tensor_syms = []
    for col, k in enumerate(order):
        sym = PlanSymbol(f"u{col}", real=True)
        rename[t_items[k][1]] = sym
        tensor_syms.append(sym)
    t_exprs = [e.xreplace(rename) for e in t_exprs]
    out_exprs = [e.xreplace(rename) for e in out_exprs]
    arg_exprs = [e.xreplace(rename) for e in arg_exprs]

    s_temps, s_reduced = sp.cse(scalar_exprs, symbols=sp.numbered_symbols("_c"), order="canonical")
    e_temps, e_reduced = sp.cse(out_exprs, symbols=sp.numbered_symbols("_e"), order="canonical")

    reductions = tuple(ReductionSpec(s["sym"], s["scope"], s["op"], s["stage"], a) for s, a in zip(specs, arg_exprs))
    nstages = 1 + max(s["stage"] for s in specs)
    stages = []
    for st in range(nstages):
        idx = tuple(k for k, s in enumerate(specs) if s["stage"] == st)
        a_temps, a_reduced = sp.cse([arg_exprs[k] for k in idx], symbols=sp.numbered_symbols("_e"),
                                    order="canonical")
        used = set()
        for e in [*a_reduced, *(x for _, x in a_temps)]:
            used |= e.free_symbols
        reads = tuple(s for s in (rule.param, rule.grad, *rule.state) if s in used)
        outs = [(rename[t_items[k][1]], t_exprs[k]) for k in order if t_stage[k] == st]
        f_temps, f_reduced = sp.cse([e for _, e in outs], symbols=sp.numbered_symbols("_f"), order="canonical")
        stages.append(ReduceStage(st, idx, tuple(a_temps), tuple(a_reduced), reads, tuple(f_temps),
                                  tuple((sym, e) for (sym, _), e in zip(outs, f_reduced))))

    return assemble_plan(rule, scalars, s_temps, s_reduced, e_temps, e_reduced, outputs,
                         reduction=ReductionInfo(reductions, tuple(tensor_syms), tuple(stages)))
