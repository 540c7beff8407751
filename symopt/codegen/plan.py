"""The plan stage: a :class:`~symopt.rulebook.rule.Rule` becomes a :class:`KernelPlan`.

Everything here is still SymPy -- no strings -- so the plan can be inspected and
tested.  Steps:

1. *Substitute* the ordered updates into one expression per output (the new
   param and each new state value); temporaries disappear.
2. *Hoist* every maximal sub-expression that depends only on hyperparameters and
   ``t`` into a per-step scalar ``s_k`` (computed once per step in float64).  The
   per-element code then reads only arrays, scalars and numeric constants.
3. *CSE* the per-step scalars and the per-element outputs separately
   (``sympy.cse`` in canonical order, so output is identical across machines).
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from ..rulebook.reduction import has_reductions
from ..rulebook.metadata import t
from ..rulebook.rule import Rule


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
    reduction: object = None  # reduce_plan.ReductionInfo for rules with TensorSum/GlobalSum..., else None


def substitute_updates(rule: Rule) -> list[tuple[sp.Symbol, sp.Expr]]:
    """Apply the updates in order; return ``(target, expr)`` for param and each updated state."""
    env: dict = {}
    for lhs, rhs in rule.updates:
        env[lhs] = rhs.xreplace(env) if env else rhs
    outs = [(rule.param, env[rule.param])]
    outs += [(s, env[s]) for s in rule.state if s in env]
    return outs


class UpdatedValue(sp.Symbol):
    """The new value of a state that a later update subtracts: an element temporary ``_u<k>``.

    Substituting the expression itself lets SymPy expand the difference -- AdaBelief's
    ``g − m_t`` with ``m_t = β1 m + (1 − β1) g`` became ``g (β1 − 1) + g − β1 m``, which for
    β1 below 2**-53 (1 − β1 rounds to 1) keeps ``−β1 m`` where ``g − m_t`` is exactly 0.  As a
    symbol, the value is computed first and the difference taken as the rule writes it.
    """


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
    """:func:`substitute_updates`, except that a state in :func:`_subtracted_states` enters the
    later updates as an :class:`UpdatedValue`.  Returns ``(outputs, values)`` with ``values`` the
    ``(UpdatedValue, expr)`` definitions in update order."""
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


class _Hoister:
    def __init__(self, arrays: set, scalar_syms: set):
        self.arrays = arrays
        self.scalar_syms = scalar_syms
        self.found: dict = {}

    def scalar(self, e: sp.Basic) -> sp.Symbol:
        if e.is_Boolean:
            e = sp.Piecewise((sp.Integer(1), e), (sp.Integer(0), True))
            sym = self.scalar(e)
            return sp.Ne(sym, 0)
        if e not in self.found:
            self.found[e] = sp.Dummy(f"s{len(self.found)}")
        return self.found[e]

    def __call__(self, e: sp.Basic):
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


def make_plan(rule: Rule) -> KernelPlan:
    """Build the kernel plan of ``rule`` (see the module docstring)."""
    if has_reductions(rule):  # reduction passes + per-tensor scalars: see reduce_plan.py
        from .reduce_plan import make_reduction_plan

        return make_reduction_plan(rule)
    outputs, values = substitute_in_order(rule)
    arrays = {rule.param, rule.grad, *rule.state, *(v for v, _ in values)}
    hoist = _Hoister(arrays, set(rule.hyper) | {t})
    hoisted = [hoist(e) for _, e in values] + [hoist(e) for _, e in outputs]
    scalars, scalar_exprs, hoisted = _rename_scalars(hoist.found, hoisted)

    s_temps, s_reduced = sp.cse(scalar_exprs, symbols=sp.numbered_symbols("_c"), order="canonical")
    e_temps, e_reduced = sp.cse(hoisted, symbols=sp.numbered_symbols("_e"), order="canonical")
    if values:  # updated values first computed as element temporaries, in dependency order
        e_temps = _in_dependency_order([*e_temps, *zip((v for v, _ in values), e_reduced[:len(values)])])
        e_reduced = e_reduced[len(values):]

    return assemble_plan(rule, scalars, s_temps, s_reduced, e_temps, e_reduced, outputs)


def count_ops(exprs) -> int:
    return int(sum(sp.count_ops(x) for x in exprs))


def assemble_plan(rule: Rule, scalars, s_temps, s_reduced, e_temps, e_reduced, outputs,
                  reduction=None) -> KernelPlan:
    """The :class:`KernelPlan` from CSE'd scalars and element outputs (shared by every planner)."""
    used = set()
    for e in [*e_reduced, *(x for _, x in e_temps)]:
        used |= e.free_symbols
    reads = tuple(s for s in (rule.param, rule.grad, *rule.state) if s in used)
    return KernelPlan(
        rule=rule,
        hyper=tuple(rule.hyper),
        state=tuple(rule.state),
        scalars=tuple(scalars),
        scalar_temps=tuple(s_temps),
        scalar_exprs=tuple(s_reduced),
        element_temps=tuple(e_temps),
        outputs=tuple((tgt, e) for (tgt, _), e in zip(outputs, e_reduced)),
        reads=reads,
        op_count=count_ops([x for _, x in e_temps]) + count_ops(e_reduced),
        scalar_op_count=count_ops([x for _, x in s_temps]) + count_ops(s_reduced),
        reduction=reduction,
    )
