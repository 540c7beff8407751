"""The plan stage: a :class:`~symopt.rulebook.rule.Rule` becomes a :class:`KernelPlan`.

Everything here is still SymPy -- no strings -- so the plan can be inspected and
tested.  Steps:

1. *Substitute* the ordered updates into one expression per output (the new
   param and each new state value); temporaries disappear.  A state whose new
   value a later update subtracts stays a symbol (:class:`UpdatedValue`), computed
   first as an element temporary.
2. *Extract reductions* (``TensorSum``, ``GlobalSum``... of
   :mod:`~symopt.rulebook.reduction`): each becomes a :class:`PlanSymbol` ``r<k>``
   whose elementwise argument is accumulated in a read-only pass over the arrays.
   A reduction whose argument contains another one belongs to a later *stage* (one
   more pass).
3. *Hoist* array-free sub-expressions, on two levels: those of hyperparameters and
   ``t`` only become per-step scalars ``s_k`` (once per step, float64, shared by
   every tensor and pass); those that also hold reduction results become
   per-tensor scalars ``u_k`` (once per tensor, after the pass of their last
   reduction).  The per-element code reads only arrays, scalars and constants.
4. *CSE* the per-step scalars, the per-tensor scalars of each stage and the
   per-element code of each pass separately (``sympy.cse`` in canonical order, so
   the output is identical across machines).

*Scale, then raise.*  A rule that normalizes an elementwise value by a reduction
and then squares it (MARS's ``c ← c / max(1, ‖c‖)`` then ``(1 − β2) c²``, a clipped
gradient in Adam's ``g²``) reaches the planner as SymPy's automatic expansion
``c² · max(1, ‖c‖)⁻²``: a per-tensor scalar times a power of an array value.
Computed that way, ``c²`` overflows (``0 · inf`` = NaN once the norm itself is inf)
or the scalar leaves float32's normal range, although ``(c / ‖c‖)²`` is at most 1.
So each product of an array power ``X**n`` and per-tensor factors ``B**(k n)`` is
regrouped as ``(X · B**k)**n``: the scaled value is one element temporary
(:class:`ScaledSymbol`), computed before the power, as the rule wrote it.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from ..rulebook.reduction import Reduction
from ..rulebook.rule import Rule


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


class KernelPlan(NamedTuple):
    rule: Rule
    hyper: tuple            # hyperparameter symbols, in the scalar function's argument order
    state: tuple            # state symbols, in kernel argument order
    scalars: tuple          # per-step scalar symbols s_0..s_k, columns of the scalar table
    scalar_temps: tuple     # ((sym, expr), ...) CSE temporaries of the scalar function
    scalar_exprs: tuple     # expressions for scalars, in terms of hyper, t and scalar_temps
    element_temps: tuple    # ((sym, expr), ...) CSE temporaries of the element loop
    outputs: tuple          # ((target, expr), ...): new param first, then updated state
    reads: tuple            # array symbols the element loop reads
    op_count: int           # operations per element (sympy.count_ops, after CSE)
    scalar_op_count: int
    reduction: ReductionInfo | None  # passes and per-tensor scalars; None for elementwise rules
    substituted: tuple      # ((target, expr), ...): step 1's outputs, updated values first, before hoisting and CSE
    substituted_op_count: int  # operations per element of ``substituted`` (what hoisting and CSE started from)

    def _repr_html_(self):
        from ..views import html

        return html(self)


class PlanSymbol(sp.Symbol):
    """A symbol made by the planner (reduction results, per-tensor scalars, element values).

    Its own class, so it never equals a rule's symbol of the same name.
    """


class UpdatedValue(PlanSymbol):
    """The new value of a state that a later update subtracts: an element temporary ``_u<k>``.

    Substituting the expression itself lets SymPy expand the difference -- AdaBelief's
    ``g − m_t`` with ``m_t = β1 m + (1 − β1) g`` became ``g (β1 − 1) + g − β1 m``, which for
    β1 below 2**-53 (1 − β1 rounds to 1) keeps ``−β1 m`` where ``g − m_t`` is exactly 0.  As a
    symbol, the value is computed first and the difference taken as the rule writes it.
    """


class ScaledSymbol(PlanSymbol):
    """An element temporary ``X · B**k`` (array value times per-tensor factors), kept whole so that
    SymPy never distributes a power over it (see *Scale, then raise* in the module doc)."""


def _subtracted_states(rule: Rule) -> set:
    """States whose new value a later update subtracts (``x − m`` with ``m`` updated before)."""
    found, updated = set(), set()
    for lhs, rhs in rule.updates:
        for node in sp.preorder_traversal(rhs):
            if isinstance(node, sp.Add):
                found |= {s for s in updated if -s in node.args}
        if lhs in rule.state:
            updated.add(lhs)
    return found


def substitute_in_order(rule: Rule):
    """Apply the updates in order, a state in :func:`_subtracted_states` entering the later updates
    as an :class:`UpdatedValue`.  Returns ``(outputs, values)``: ``(target, expr)`` for the param and
    each updated state, and the ``(UpdatedValue, expr)`` definitions in update order."""
    keep = _subtracted_states(rule)
    env: dict = {}
    values = []
    for lhs, rhs in rule.updates:
        env[lhs] = rhs.xreplace(env) if env else rhs
        if lhs in keep:
            sym = UpdatedValue(f"_u{len(values)}", real=True)
            values.append((sym, env[lhs]))
            env[lhs] = sym
    outs = [(rule.param, env[rule.param])]
    outs += [(s, env[s]) for s in rule.state if s in env]
    return outs, values


def _extract_reductions(exprs: list, values: list):
    """Replace every reduction node (inner first) by a :class:`PlanSymbol` ``r<k>``.

    ``exprs`` are the definitions of ``values`` (in order) followed by the outputs.  A
    reduction's stage is one more than the last stage of the reductions its argument
    uses, directly or through an updated value.  Returns ``(exprs, specs)``.
    """
    table: dict = {}
    specs: list = []
    ready: dict = {}  # symbol -> first stage that may read it (reduction results, updated values)

    def first_stage(e) -> int:
        return max((ready[s] for s in e.free_symbols if s in ready), default=0)

    def walk(e):
        if isinstance(e, Reduction):
            arg = walk(e.args[0])
            key = (type(e), arg)
            if key not in table:
                stage = first_stage(arg)
                sym = PlanSymbol(f"r{len(specs)}", real=True)
                specs.append({"sym": sym, "scope": e.scope, "op": e.op, "stage": stage, "arg": arg})
                table[key] = sym
                ready[sym] = stage + 1
            return table[key]
        if not e.args or not e.has(Reduction):
            return e
        return e.func(*[walk(a) for a in e.args])

    new = []
    for k, e in enumerate(exprs):
        new.append(walk(e))
        if k < len(values):
            ready[values[k][0]] = first_stage(new[-1])
    return new, specs


class Hoister:
    """Hoists the array-free sub-expressions of per-element expressions into scalars.

    Calling it on an expression returns the expression with every maximal array-free
    sub-expression replaced by a symbol: a per-step scalar (in :attr:`found`, keyed by
    its expression) or, when it holds reduction results, a per-tensor scalar (in
    :attr:`tensor_found`, its expression's own per-step parts hoisted in turn).
    """

    def __init__(self, arrays, reduction_syms=(), found: dict | None = None):
        self.arrays = set(arrays)
        self.reduction_syms = set(reduction_syms)
        self.found: dict = {} if found is None else found
        self.tensor_found: dict = {}
        self.scaled: dict = {}  # ScaledSymbol -> its hoisted definition X · B**k
        # Per-step parts of per-tensor scalars: reduction results play the arrays' part.
        self.per_step = Hoister(self.reduction_syms, found=self.found) if self.reduction_syms else None

    def scalar(self, e: sp.Basic) -> sp.Basic:
        if e.is_Boolean:
            e = sp.Piecewise((sp.Integer(1), e), (sp.Integer(0), True))
            return sp.Ne(self.scalar(e), 0)
        if e.free_symbols & self.reduction_syms:
            key = self.per_step(e)
            if key not in self.tensor_found:
                self.tensor_found[key] = PlanSymbol(f"u{len(self.tensor_found)}", real=True)
            return self.tensor_found[key]
        if e not in self.found:
            self.found[e] = sp.Dummy(f"s{len(self.found)}")
        return self.found[e]

    def __call__(self, e: sp.Basic):
        if e.is_Mul and e.free_symbols & self.arrays and e.free_symbols & self.reduction_syms:
            e = self._scale_then_raise(e)
        if e.is_Number or e in (sp.true, sp.false):
            return e
        if not (e.free_symbols & self.arrays):
            return self.scalar(e)
        if e.is_Add or e.is_Mul:
            nums = [a for a in e.args if a.is_Number]
            free = [a for a in e.args if not a.is_Number and not (a.free_symbols & self.arrays)]
            rest = [self(a) for a in e.args if a.free_symbols & self.arrays]
            if free:
                rest.append(self.scalar(e.func(*nums, *free)))
            else:
                rest.extend(nums)
            return e.func(*rest)
        if isinstance(e, sp.Piecewise):
            return sp.Piecewise(*[(self(x), self(c)) for x, c in e.args])
        if e.args:
            return e.func(*[self(a) for a in e.args])
        return e

    def _scale_then_raise(self, e: sp.Mul) -> sp.Expr:
        """``X**n · B**(k n) · rest`` -> ``W**n · rest`` with ``W`` = ``X · B**k`` an element temporary
        (``n`` an integer, |n| >= 2; ``B`` array-free and holding reduction results)."""
        args = list(e.args)
        tensor = {}
        for i, a in enumerate(args):
            if not (a.free_symbols & self.arrays) and a.free_symbols & self.reduction_syms:
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


def _rename_scalars(found: dict, exprs: list):
    """Give scalars canonical names s0, s1... ordered by their expressions."""
    items = sorted(found.items(), key=lambda kv: sp.default_sort_key(kv[0]))
    mapping = {}
    scalars = []
    scalar_exprs = []
    for i, (expr, dummy) in enumerate(items):
        sym = sp.Symbol(f"s{i}", real=True)
        mapping[dummy] = sym
        scalars.append(sym)
        scalar_exprs.append(expr)
    return scalars, scalar_exprs, [e.xreplace(mapping) for e in exprs]


def _in_dependency_order(items: list) -> list:
    """``(sym, expr)`` pairs reordered (stably) so that each comes after those it uses."""
    pending, done, out = list(items), set(), []
    defined = {sym for sym, _ in items}
    while pending:
        for k, (sym, expr) in enumerate(pending):
            if not ((expr.free_symbols & defined) - done):
                out.append(pending.pop(k))
                done.add(sym)
                break
        else:
            raise ValueError("element temporaries depend on each other in a cycle")
    return out


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


def _cse_pass(exprs: list, values: list, scaled: dict):
    """Temporaries and reduced ``exprs`` of one pass over the elements.

    The updated values the pass uses (directly, or through a scaled symbol or another
    value) are computed first, as element temporaries in dependency order.
    """
    defs = dict(values)
    used, frontier = set(), list(exprs)
    while frontier:
        syms = set().union(*[e.free_symbols for e in frontier])
        new = {s for s in syms if (s in defs or s in scaled) and s not in used}
        used |= new
        frontier = [defs[s] if s in defs else scaled[s] for s in new]
    mine = [(v, d) for v, d in values if v in used]
    temps, reduced = _cse_elements([d for _, d in mine] + list(exprs), scaled)
    if mine:
        temps = _in_dependency_order([*temps, *zip((v for v, _ in mine), reduced[:len(mine)])])
        reduced = reduced[len(mine):]
    return temps, reduced


def _count_ops(exprs) -> int:
    return int(sum(sp.count_ops(x) for x in exprs))


def _reads(rule: Rule, temps, exprs) -> tuple:
    """The rule's arrays (param, grad, state) that ``temps`` and ``exprs`` use, in argument order."""
    used = set()
    for e in [*exprs, *(x for _, x in temps)]:
        used |= e.free_symbols
    return tuple(s for s in (rule.param, rule.grad, *rule.state) if s in used)


def make_plan(rule: Rule) -> KernelPlan:
    """Build the kernel plan of ``rule`` (see the module docstring)."""
    outputs, values = substitute_in_order(rule)
    substituted = (*values, *outputs)
    nv = len(values)
    exprs, specs = _extract_reductions([e for _, e in values] + [e for _, e in outputs], values)
    rsyms = {s["sym"] for s in specs}
    hoist = Hoister({rule.param, rule.grad, *rule.state, *(v for v, _ in values)}, rsyms)
    hoisted = [hoist(e) for e in exprs]
    arg_exprs = [hoist(s["arg"]) for s in specs]
    # Per-tensor scalar expressions, in terms of reduction results and per-step dummies.
    t_items = list(hoist.tensor_found.items())
    t_exprs = [expr for expr, _ in t_items]
    scaled_syms = list(hoist.scaled)

    nh, na, nt = len(hoisted), len(arg_exprs), len(t_exprs)
    scalars, scalar_exprs, renamed = _rename_scalars(
        hoist.found, hoisted + arg_exprs + t_exprs + [hoist.scaled[w] for w in scaled_syms])
    hoisted, arg_exprs = renamed[:nh], renamed[nh:nh + na]
    t_exprs, scaled_defs = renamed[nh + na:nh + na + nt], renamed[nh + na + nt:]

    # Per-tensor scalars: computed after the pass of the last reduction they read; columns
    # ordered by stage, then by expression.
    stage_of = {s["sym"]: s["stage"] for s in specs}
    t_stage = [max(stage_of[r] for r in e.free_symbols & rsyms) for e in t_exprs]
    order = sorted(range(nt), key=lambda k: (t_stage[k], sp.default_sort_key(t_exprs[k])))
    rename = {}
    tensor_syms = []
    for col, k in enumerate(order):
        sym = PlanSymbol(f"u{col}", real=True)
        rename[t_items[k][1]] = sym
        tensor_syms.append(sym)
    t_exprs = [e.xreplace(rename) for e in t_exprs]
    hoisted = [e.xreplace(rename) for e in hoisted]
    arg_exprs = [e.xreplace(rename) for e in arg_exprs]
    scaled = {w: e.xreplace(rename) for w, e in zip(scaled_syms, scaled_defs)}
    values = [(v, d) for (v, _), d in zip(values, hoisted[:nv])]
    out_exprs = hoisted[nv:]

    s_temps, s_reduced = sp.cse(scalar_exprs, symbols=sp.numbered_symbols("_c"), order="canonical")
    e_temps, e_reduced = _cse_pass(out_exprs, values, scaled)
    reduction = _reduction_info(rule, specs, arg_exprs, values, scaled, t_items, t_exprs, t_stage, order,
                                rename, tensor_syms) if specs else None
    return KernelPlan(
        rule=rule,
        hyper=tuple(rule.hyper),
        state=tuple(rule.state),
        scalars=tuple(scalars),
        scalar_temps=tuple(s_temps),
        scalar_exprs=tuple(s_reduced),
        element_temps=tuple(e_temps),
        outputs=tuple((tgt, e) for (tgt, _), e in zip(outputs, e_reduced)),
        reads=_reads(rule, e_temps, e_reduced),
        op_count=_count_ops([x for _, x in e_temps]) + _count_ops(e_reduced),
        scalar_op_count=_count_ops([x for _, x in s_temps]) + _count_ops(s_reduced),
        reduction=reduction,
        substituted=substituted,
        substituted_op_count=_count_ops([e for _, e in substituted]),
    )


def _reduction_info(rule, specs, arg_exprs, values, scaled, t_items, t_exprs, t_stage, order, rename,
                    tensor_syms) -> ReductionInfo:
    """The read-only passes: per stage, the CSE'd arguments it accumulates and the finalize step."""
    # The specs keep each argument written out (scaled symbols substituted back: documentation only).
    written = {w: scaled[w] for w in reversed(list(scaled))}
    shown = [a.xreplace(written) for a in arg_exprs]
    while any(a.free_symbols & set(scaled) for a in shown):
        shown = [a.xreplace(written) for a in shown]
    reductions = tuple(ReductionSpec(s["sym"], s["scope"], s["op"], s["stage"], a) for s, a in zip(specs, shown))
    stages = []
    for st in range(1 + max(s["stage"] for s in specs)):
        idx = tuple(k for k, s in enumerate(specs) if s["stage"] == st)
        a_temps, a_reduced = _cse_pass([arg_exprs[k] for k in idx], values, scaled)
        outs = [(rename[t_items[k][1]], t_exprs[k]) for k in order if t_stage[k] == st]
        f_temps, f_reduced = sp.cse([e for _, e in outs], symbols=sp.numbered_symbols("_f"), order="canonical")
        stages.append(ReduceStage(st, idx, tuple(a_temps), tuple(a_reduced), _reads(rule, a_temps, a_reduced),
                                  tuple(f_temps), tuple((sym, e) for (sym, _), e in zip(outs, f_reduced))))
    return ReductionInfo(reductions, tuple(tensor_syms), tuple(stages))
