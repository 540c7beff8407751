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

*Scale, then raise.*  A rule that normalizes an elementwise value by a reduction
and then squares it (MARS's ``c ← c / max(1, ‖c‖)`` then ``(1 − β2) c²``, a clipped
gradient in Adam's ``g²``) reaches the planner as SymPy's automatic expansion
``c² · max(1, ‖c‖)⁻²``: a per-tensor scalar times a power of an array value.
Computed that way, ``c²`` overflows (``0 · inf`` = NaN once the norm itself is inf)
or the scalar leaves float32's normal range, although ``(c / ‖c‖)²`` is at most 1.
So each product of an array power ``X**n`` and per-tensor factors ``B**(k n)`` is
regrouped as ``(X · B**k)**n``: the scaled value is one element temporary
(:data:`ScaledSymbol`), computed before the power, as the rule wrote it.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from ..rulebook.reduction import Reduction
from ..rulebook.rule import Rule
from .plan import KernelPlan, _Hoister, _in_dependency_order, _rename_scalars, assemble_plan, substitute_updates


class PlanSymbol(sp.Symbol):
    """A symbol made by the planner (reduction results, per-tensor scalars).

    Its own class, so it never equals a rule's symbol of the same name.
    """


class ScaledSymbol(PlanSymbol):
    """An element temporary ``X · B**k`` (array value times per-tensor factors), kept whole so that
    SymPy never distributes a power over it (see *Scale, then raise* in the module doc)."""


#: Bumped when the plan of rules with reductions changes the generated code (part of the modules'
#: input hash, so a user rule's module cached by an older planner is regenerated).
#: 2: scale, then raise.
PLAN_REVISION = 2


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
        super().__init__(set(arrays), set())
        self.rsyms = rsyms
        self.inner = _Hoister(set(rsyms), set())
        self.inner.found = self.found            # per-step scalars are shared by both levels
        self.tensor_found: dict = {}
        self.scaled: dict = {}                   # ScaledSymbol -> its hoisted definition X · u

    def __call__(self, e):
        if e.is_Mul and e.free_symbols & self.arrays and e.free_symbols & self.rsyms:
            e = self._scale_then_raise(e)
        return super().__call__(e)

    def _scale_then_raise(self, e: sp.Mul) -> sp.Expr:
        """``X**n · B**(k n) · rest`` -> ``W**n · rest`` with ``W`` = ``X · B**k`` an element temporary
        (``n`` an integer, |n| >= 2; ``B`` array-free and holding reduction results)."""
        args = list(e.args)
        tensor = {}
        for i, a in enumerate(args):
            if not (a.free_symbols & self.arrays) and a.free_symbols & self.rsyms:
                base, exp = a.as_base_exp()
                if exp.is_Integer:
                    tensor[i] = (base, int(exp))
        if not tensor or not any(a.is_Pow and a.exp.is_Integer and abs(int(a.exp)) >= 2 for a in args):
            return e
        out, used = [], set()
        for i, a in enumerate(args):
            if i in tensor:
                continue
            if not (a.is_Pow and a.exp.is_Integer and abs(int(a.exp)) >= 2 and a.base.free_symbols & self.arrays):
                out.append(a)
                continue
            n = int(a.exp)
            mine = [j for j, (_, m) in tensor.items() if j not in used and m % n == 0]
            if not mine:
                out.append(a)
                continue
            used.update(mine)
            definition = self(sp.Mul(a.base, *[tensor[j][0] ** (tensor[j][1] // n) for j in mine]))
            sym = next((w for w, d in self.scaled.items() if d == definition), None)
            if sym is None:
                sym = ScaledSymbol(f"w{len(self.scaled)}", real=True)
                self.scaled[sym] = definition
                self.arrays.add(sym)
            out.append(sp.Pow(sym, n))
        if not used:
            return e
        return sp.Mul(*out, *[args[j] for j in tensor if j not in used])

    def scalar(self, e):
        if e.is_Boolean or not (e.free_symbols & self.rsyms):
            return super().scalar(e)
        inner = self.inner(e)
        if inner not in self.tensor_found:
            self.tensor_found[inner] = PlanSymbol(f"u{len(self.tensor_found)}", real=True)
        return self.tensor_found[inner]


def _cse_elements(exprs: list, scaled: dict):
    """``sp.cse`` of per-element expressions, with the :class:`ScaledSymbol` definitions they use as
    temporaries of their own (never substituted, so no power is distributed over them).

    Without scaled symbols this is exactly ``sp.cse(exprs)``.  Otherwise the definitions go through
    the same CSE, the temporaries are put in dependency order and numbered ``_e0, _e1...`` again.
    """
    need, frontier = [], list(exprs)
    while frontier:  # the scaled symbols used, directly or through another one's definition
        found = sorted((set().union(*[e.free_symbols for e in frontier]) & set(scaled)) - set(need),
                       key=sp.default_sort_key)
        need.extend(found)
        frontier = [scaled[w] for w in found]
    if not need:
        return sp.cse(exprs, symbols=sp.numbered_symbols("_e"), order="canonical")
    temps, reduced = sp.cse([scaled[w] for w in need] + list(exprs), symbols=sp.numbered_symbols("_x"),
                            order="canonical")
    defs, reduced = reduced[:len(need)], reduced[len(need):]
    alias = {w: d for w, d in zip(need, defs) if d.is_Symbol}
    items = list(temps) + [(w, d) for w, d in zip(need, defs) if w not in alias]
    items = [(sym, e.xreplace(alias)) for sym, e in items]
    reduced = [e.xreplace(alias) for e in reduced]
    ordered = _in_dependency_order(items)  # then canonical names
    names = {sym: sp.Symbol(f"_e{k}") for k, (sym, _) in enumerate(ordered)}
    return ([(names[sym], e.xreplace(names)) for sym, e in ordered], [e.xreplace(names) for e in reduced])


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

    scaled_syms = list(hoist.scaled)

    n_out, n_arg, n_t = len(out_exprs), len(arg_exprs), len(t_exprs)
    scalars, scalar_exprs, renamed = _rename_scalars(
        hoist.found, out_exprs + arg_exprs + t_exprs + [hoist.scaled[w] for w in scaled_syms])
    out_exprs, arg_exprs = renamed[:n_out], renamed[n_out:n_out + n_arg]
    t_exprs, scaled_defs = renamed[n_out + n_arg:n_out + n_arg + n_t], renamed[n_out + n_arg + n_t:]

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
    scaled = {w: e.xreplace(rename) for w, e in zip(scaled_syms, scaled_defs)}

    s_temps, s_reduced = sp.cse(scalar_exprs, symbols=sp.numbered_symbols("_c"), order="canonical")
    e_temps, e_reduced = _cse_elements(out_exprs, scaled)

    # The specs keep each argument written out (scaled symbols substituted back: documentation only).
    written = {w: scaled[w] for w in reversed(scaled_syms)}
    shown = [a.xreplace(written) for a in arg_exprs]
    while any(a.free_symbols & set(scaled) for a in shown):
        shown = [a.xreplace(written) for a in shown]
    reductions = tuple(ReductionSpec(s["sym"], s["scope"], s["op"], s["stage"], a) for s, a in zip(specs, shown))
    nstages = 1 + max(s["stage"] for s in specs)
    stages = []
    for st in range(nstages):
        idx = tuple(k for k, s in enumerate(specs) if s["stage"] == st)
        a_temps, a_reduced = _cse_elements([arg_exprs[k] for k in idx], scaled)
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
