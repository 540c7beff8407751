"""Checks that a :class:`~symopt.rulebook.rule.Rule` is well formed, at construction.

Every message names the offending part.  A rule is rejected when it never updates
the parameter, uses a symbol that is neither param, grad, state, hyperparameter,
an earlier temporary nor the step ``t``, assigns to a hyperparameter or to ``t``,
has a state initial value that depends on per-element values other than the
parameter, uses a function the printer cannot print, or is not elementwise
(matrices, indexed objects, sums over indices).
"""

from __future__ import annotations

import sympy as sp

from .reduction import GlobalMean, GlobalSum, TensorMean, TensorSum
from .rule import RuleError, t

#: Functions the kernel printer knows how to print; anything else is rejected.
PRINTABLE_FUNCTIONS = (
    sp.exp, sp.log, sp.Abs, sp.sign, sp.Max, sp.Min, sp.Piecewise,
    sp.tanh, sp.sinh, sp.cosh, sp.sin, sp.cos, sp.atan, sp.erf, sp.Heaviside,
    sp.floor, sp.ceiling, sp.Mod,  # step arithmetic in t (schedules, "every k steps")
)
_ATOMS_OK = (sp.Symbol, sp.Number, sp.NumberSymbol, sp.logic.boolalg.BooleanAtom)
_NODES_OK = (sp.Add, sp.Mul, sp.Pow, sp.core.relational.Relational, sp.And, sp.Or, sp.Not,
             sp.functions.elementary.piecewise.ExprCondPair)


def check_expression(expr: sp.Basic, where: str) -> None:
    """Reject nodes the pipeline cannot print as elementwise scalar code."""
    for node in sp.preorder_traversal(expr):
        if isinstance(node, _ATOMS_OK):
            if isinstance(node, sp.Symbol) and type(node) is not sp.Symbol and not isinstance(node, sp.Dummy):
                raise RuleError(f"{where}: {node} is a {type(node).__name__}; only plain Symbols are elementwise")
            if node in (sp.zoo, sp.nan) or node is sp.oo or node is sp.S.NegativeInfinity:
                raise RuleError(f"{where}: contains the non-finite constant {node}")
            continue
        if isinstance(node, _NODES_OK):
            continue
        if isinstance(node, PRINTABLE_FUNCTIONS):
            continue
        if type(node) in (TensorSum, TensorMean, GlobalSum, GlobalMean):  # reduction passes (reduce_plan.py)
            continue
        kind = type(node).__name__
        if isinstance(node, (sp.MatrixBase, sp.MatrixExpr, sp.Indexed, sp.IndexedBase, sp.Sum, sp.Product)):
            raise RuleError(f"{where}: {kind} is not elementwise; updates must be scalar expressions per element")
        raise RuleError(f"{where}: the function {kind} cannot be printed into a kernel "
                        f"(supported: {', '.join(f.__name__ for f in PRINTABLE_FUNCTIONS)})")


def check_rule(rule) -> None:
    arrays = {rule.param, rule.grad, *rule.state}
    hypers = set(rule.hyper)
    names: dict[str, sp.Symbol] = {}
    for sym in [rule.param, rule.grad, *rule.state, *rule.hyper, *(lhs for lhs, _ in rule.updates)]:
        prev = names.get(sym.name)
        if prev is not None and prev != sym:
            raise RuleError(f"two different symbols share the name {sym.name!r} (different assumptions?)")
        names[sym.name] = sym
    if t.name in names and names[t.name] != t:
        raise RuleError(f"the name {t.name!r} is reserved for the step counter symopt.t")
    overlap = (arrays & hypers)
    if overlap:
        raise RuleError(f"{sorted(map(str, overlap))} declared both as state/param/grad and hyperparameter")
    if t in arrays or t in hypers:
        raise RuleError("symopt.t is the step counter; it cannot be a state variable or hyperparameter")
    for sym, spec in rule.state.items():
        init = spec.init
        if isinstance(init, bool) or not isinstance(init, (int, float, sp.Basic)):
            raise RuleError(f"state variable {sym}: initial value must be a number, an expression in "
                            f"hyperparameters or the param symbol, got {init!r}")
        init = sp.sympify(init)
        if init != rule.param:
            check_expression(init, f"initial value of state {sym}")
            bad = init.free_symbols - hypers
            if bad:
                raise RuleError(f"state variable {sym}: initial value may use only hyperparameters "
                                f"(or be the param itself); it uses {sorted(map(str, bad))}")
    known = set(arrays) | hypers | {t}
    updated_param = False
    for i, (lhs, rhs) in enumerate(rule.updates):
        where = f"update {i + 1} ({lhs} = ...)"
        if lhs in hypers:
            raise RuleError(f"{where}: {lhs} is a hyperparameter; hyperparameters are read-only in a rule")
        if lhs == t:
            raise RuleError(f"{where}: the step counter t cannot be assigned")
        check_expression(rhs, where)
        unknown = rhs.free_symbols - known
        if unknown:
            raise RuleError(f"{where}: unknown symbols {sorted(map(str, unknown))}; every symbol must be the "
                            f"param, grad, a state variable, a hyperparameter, an earlier temporary or symopt.t")
        if rhs.has(sp.Piecewise):
            for pw in rhs.atoms(sp.Piecewise):
                if not pw.args[-1].cond == sp.true:
                    raise RuleError(f"{where}: every Piecewise needs a final (expr, True) branch")
        known.add(lhs)
        if lhs == rule.param:
            updated_param = True
    if not updated_param:
        raise RuleError(f"rule {rule.name!r} never updates the param {rule.param}")
    for sym, spec in rule.state.items():
        if not any(lhs == sym for lhs, _ in rule.updates):
            raise RuleError(f"state variable {sym} is never updated; make it a hyperparameter or drop it")
    for sym in names.values():
        if not sym.name or "\x00" in sym.name:
            raise RuleError(f"symbol name {sym.name!r} is empty or holds a NUL character")
