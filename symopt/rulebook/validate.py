"""Checks that a :class:`~symopt.rulebook.rule.Rule` (and a ``Family``) is well formed.

``check_rule`` runs at construction; :func:`symopt.rulebook.rule.check_family` runs
again on a user family right before its module is generated, with the helpers here.
Every message names the offending part.  A rule is rejected when it

* never updates the parameter;
* uses a symbol that is neither param, grad, state, hyperparameter, an earlier
  temporary nor the step ``t`` (e.g. a state variable before it is declared, or a
  typo);
* assigns to a hyperparameter or to ``t``;
* has a state variable without an initial value, or whose initial value depends on
  per-element values other than the parameter itself (initial values are computed
  once per tensor from hyperparameters);
* holds a node the printers cannot print, compared by *exact* type: only plain
  ``Symbol``/``Dummy``, finite numbers (``Integer``, ``Rational``, ``Float``
  representable as a finite float64), ``pi``, ``E``, ``Add``, ``Mul``, ``Pow``,
  relations, ``And``/``Or``/``Not``, ``Piecewise`` with a final ``True`` branch and
  the functions the registry (:mod:`symopt.functions`) admits in rules.  A subclass
  of an allowed class is rejected too: SymPy printers let an object print itself
  (``_pythoncode``), which would paste arbitrary text into the kernel;
* is not elementwise (matrices, indexed objects, sums/products over indices) outside an
  :class:`~symopt.rulebook.matrix.Iterate`, whose body may hold ``MatrixSymbol`` (its own
  variable only), ``MatAdd``, ``MatMul``, ``Transpose`` and integer ``MatPow`` with
  coefficients in hyperparameters (see :mod:`.matrix`); one ``Iterate`` per rule;
* has malformed hyperparameter or state metadata (NaN or reversed bounds, a default
  outside its range, keys that collide in ``param_groups`` or ``state_dict``).

A family's variant conditions and constraints may use only its hyperparameters and
options (they are per-step scalars: nothing per element), with the same node rules.
"""

from __future__ import annotations

import math

import sympy as sp
from sympy.core import numbers as _numbers
from sympy.core import relational as _rel
from sympy.logic import boolalg as _boolalg
from sympy.matrices.expressions.matexpr import MatrixElement

from ..functions import REGISTRY, registered
from .matrix import SHAPE_SYMBOLS, Iterate
from .factored import FACTOR_SYMBOLS, ColMean, RowMean, is_factored_rule
from .preconditioned import Eigenbasis, InverseRoot, Preconditioned, RMSNormalized
from .reduction import GlobalMean, GlobalSum, TensorMean, TensorSum
from .metadata import NONE_VALUE, Hyper, RuleError, State, t

#: Functions a rule may use (the registry's ``in_rules``); anything else is rejected.
RULE_FUNCTIONS = tuple(f.sympy for f in REGISTRY if f.in_rules)
#: Sums/means over a tensor or over all tensors: the plan turns them into reduction passes
#: (reduction.py, codegen/plan.py); they never reach a printer.
_REDUCTION_TYPES = frozenset({TensorSum, TensorMean, GlobalSum, GlobalMean, RowMean, ColMean})
_NUMBER_TYPES = frozenset({
    _numbers.Integer, _numbers.Rational, _numbers.Float, _numbers.Zero, _numbers.One,
    _numbers.NegativeOne, _numbers.Half, _numbers.Pi, _numbers.Exp1,
})
_NODE_TYPES = frozenset({
    sp.Add, sp.Mul, sp.Pow, _rel.Equality, _rel.Unequality, _rel.StrictLessThan, _rel.LessThan,
    _rel.StrictGreaterThan, _rel.GreaterThan, _boolalg.And, _boolalg.Or, _boolalg.Not,
    _boolalg.BooleanTrue, _boolalg.BooleanFalse, sp.Piecewise, sp.functions.elementary.piecewise.ExprCondPair,
    *RULE_FUNCTIONS,
})
SYMBOL_TYPES = frozenset({sp.Symbol, sp.Dummy})
_NON_ELEMENTWISE = (sp.MatrixBase, sp.MatrixExpr, MatrixElement, sp.Indexed, sp.IndexedBase, sp.Idx, sp.Sum,
                    sp.Product, sp.Integral, sp.Derivative)
#: Deepest expression tree accepted (the printer and Python's parser both recurse).
MAX_DEPTH = 60
_RESERVED_STATE_KEYS = frozenset({"step"})
_RESERVED_HYPER_KEYS = frozenset({"params"})


def _depth(expr: sp.Basic) -> int:
    best, stack = 0, [(expr, 1)]
    while stack:
        node, d = stack.pop()
        best = max(best, d)
        if best > MAX_DEPTH:
            return best
        stack.extend((a, d + 1) for a in node.args)
    return best


def check_expression(expr, where: str) -> None:
    """Reject anything the pipeline cannot print as elementwise scalar code (see module doc)."""
    if not isinstance(expr, sp.Basic):
        raise RuleError(f"{where}: expected a SymPy expression, got {type(expr).__name__}")
    if _depth(expr) > MAX_DEPTH:
        raise RuleError(f"{where}: the expression is nested more than {MAX_DEPTH} levels deep; "
                        f"split it into temporaries")
    stack = [expr]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is Iterate:  # its matrix body is checked on its own; start and count are scalar
            check_matrix_body(node, where)
            stack.extend((node.start, node.count))
            continue
        if kind is Preconditioned:  # its matrix states and value are checked on their own
            check_preconditioned(node, where)
            stack.append(node.start)
            continue
        stack.extend(reversed(node.args))
        if kind in SYMBOL_TYPES:
            continue
        if kind in _NUMBER_TYPES:
            try:
                value = float(node)
            except (OverflowError, TypeError, ValueError):
                value = math.inf
            if not math.isfinite(value):
                raise RuleError(f"{where}: the constant {sp.sstr(node)[:60]} is not a finite float64")
            continue
        if kind in _REDUCTION_TYPES:
            continue
        if kind in _NODE_TYPES:
            if kind is sp.Piecewise and node.args[-1].cond != sp.true:
                raise RuleError(f"{where}: every Piecewise needs a final (expr, True) branch")
            continue
        name = kind.__name__
        if isinstance(node, sp.Symbol):
            raise RuleError(f"{where}: {node.name!r} is a {name}; only plain sympy Symbols are allowed "
                            f"(Symbol subclasses such as Wild or custom classes are not elementwise data)")
        if node in (sp.zoo, sp.nan) or node is sp.oo or node is sp.S.NegativeInfinity:
            raise RuleError(f"{where}: contains the non-finite constant {node}")
        if isinstance(node, _NON_ELEMENTWISE):
            raise RuleError(f"{where}: {name} is not elementwise; updates must be scalar expressions per element")
        if any(isinstance(node, allowed) for allowed in (*_NODE_TYPES, *_NUMBER_TYPES)):
            raise RuleError(f"{where}: {name} subclasses a SymPy class the printer supports, but only the "
                            f"SymPy classes themselves are accepted (a subclass may print arbitrary code)")
        if registered(node) is not None:
            raise RuleError(f"{where}: the function {name} is not admitted in optimizer rules "
                            f"(admitted: {', '.join(f.__name__ for f in RULE_FUNCTIONS)}, Piecewise)")
        raise RuleError(f"{where}: the function {name} cannot be printed into a kernel "
                        f"(supported: {', '.join(f.__name__ for f in RULE_FUNCTIONS)}, Piecewise, "
                        f"+, *, **, relations, And/Or/Not)")


_MATRIX_TYPES = frozenset({sp.MatAdd, sp.MatMul, sp.Transpose, sp.MatPow})


def check_matrix_body(node, where: str) -> None:
    """An :class:`Iterate` body: matrix sums and products of its variable, transposes and integer
    powers, with scalar coefficients (numbers and symbols; :func:`check_rule` limits them to
    hyperparameters)."""
    var = node.var
    stack = [node.body]
    while stack:
        m = stack.pop()
        kind = type(m)
        if kind is sp.MatrixSymbol:
            if m != var:
                raise RuleError(f"{where}: the iteration body uses the matrix {m.name}; only its variable "
                                f"{var.name} may appear")
            continue
        if kind not in _MATRIX_TYPES:
            raise RuleError(f"{where}: {kind.__name__} in an iteration body; allowed: MatAdd, MatMul, "
                            f"Transpose, integer MatPow of the variable {var.name}")
        if kind is sp.MatPow and not (m.exp.is_Integer and int(m.exp) >= 1):
            raise RuleError(f"{where}: matrix power {sp.sstr(m.exp)} in an iteration body; only positive integers")
        for a in m.args:
            if isinstance(a, sp.MatrixExpr):
                stack.append(a)
            elif not (kind is sp.MatPow and a is m.exp):
                check_expression(a, f"{where}: coefficient in the iteration body")


def check_preconditioned(node, where: str) -> None:
    """A :class:`Preconditioned` node: its states' initial values, updates and conditions and its
    value are matrix sums and products of its variable and matrix states (and ``InverseRoot`` /
    ``Eigenbasis`` of a state), with scalar coefficients that pass :func:`check_expression`.
    The value may read the states of another node of the rule (the planner checks that they exist)."""
    allowed = _MATRIX_TYPES | {InverseRoot, Eigenbasis, RMSNormalized, sp.Identity, sp.ZeroMatrix}
    square = {(m.shape[0], m.shape[0]) for m in (node.var, node.var.T)}
    check_expression(node.keep, f"{where}: the condition of the axes that keep states")
    check_expression(node.merge, f"{where}: the limit of merged axes")
    for st in node.states:
        check_expression(st.init_diagonal(), f"{where}: initial value of {st.sym.name}")
        check_expression(st.when, f"{where}: condition of {st.sym.name}")
    for what, root in [*((f"the update of {st.sym.name}", st.update) for st in node.states), ("the value", node.value)]:
        stack = [root]
        while stack:
            m = stack.pop()
            kind = type(m)
            if kind is sp.MatrixSymbol:
                if m != node.var and m.shape not in square:
                    raise RuleError(f"{where}: the matrix {m.name} in {what} is neither {node.var.name} nor a "
                                    f"square matrix state")
                continue
            if kind not in allowed:
                raise RuleError(f"{where}: {kind.__name__} in {what}; allowed: MatAdd, MatMul, Transpose, "
                                f"InverseRoot and Eigenbasis of {node.var.name} and the matrix states")
            if kind is RMSNormalized:
                check_expression(m.eps, f"{where}: ε of the normalization in {what}")
                check_expression(m.when, f"{where}: condition of the normalization in {what}")
                stack.append(m.arg)
                continue
            if kind is Eigenbasis:
                check_expression(m.first, f"{where}: condition of the exact eigenbasis in {what}")
                if m.limit != sp.oo:
                    check_expression(m.limit, f"{where}: size limit of the eigenbasis in {what}")
                stack.extend(m.args[:2])
                continue
            for a in m.args:
                if isinstance(a, sp.MatrixExpr):
                    stack.append(a)
                elif kind is not sp.MatPow:
                    check_expression(a, f"{where}: coefficient in {what}")


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_text(value, what: str) -> None:
    """Any text that reaches generated files must be a str that UTF-8 can encode (no lone surrogates)."""
    if not isinstance(value, str):
        raise RuleError(f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RuleError(f"{what} {value[:60]!r} is not valid Unicode text ({exc.reason})") from None


def check_name(value, what: str, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        raise RuleError(f"{what} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise RuleError(f"{what} {value!r} holds a NUL character")
    check_text(value, what)


def check_hyper(sym, h, where: str = "") -> None:
    """Hyperparameter metadata: bounds are numbers (not NaN), low <= high, default inside."""
    label = f"{where}hyperparameter {sym}"
    if not isinstance(h, Hyper):
        raise RuleError(f"{label}: expected a symopt.Hyper, got {type(h).__name__}")
    check_name(h.key, f"{label}: key", allow_none=True)
    if h.key in _RESERVED_HYPER_KEYS:
        raise RuleError(f"{label}: key {h.key!r} is reserved (param groups hold the params under it)")
    if h.index is not None and (not isinstance(h.index, int) or isinstance(h.index, bool) or h.index < 0):
        raise RuleError(f"{label}: index must be None or an int >= 0, got {h.index!r}")
    check_text(h.doc, f"{label}: doc")
    for side in ("low", "high"):
        v = getattr(h, side)
        if not _is_real(v) or math.isnan(v):
            raise RuleError(f"{label}: {side} bound must be a number (inf allowed), got {v!r}")
        if not isinstance(getattr(h, f"{side}_open"), bool):
            raise RuleError(f"{label}: {side}_open must be True or False")
    if h.kind in ("bool", "choice") or (h.kind == "optional" and h.default == NONE_VALUE):
        return  # choices are checked by Hyper itself; None is outside the range on purpose
    if h.low > h.high:
        raise RuleError(f"{label}: low bound {h.low!r} is above high bound {h.high!r}")
    d = h.default
    if d < h.low or d > h.high or (h.low_open and d == h.low) or (h.high_open and d == h.high):
        raise RuleError(f"{label}: default {d!r} is outside its range {h.range_text()}")


def check_hyper_keys(hyper: dict, where: str) -> None:
    plain: dict = {}
    indexed: dict = {}
    for sym, h in hyper.items():
        key = h.key or sym.name
        if h.index is None:
            if key in plain or key in indexed:
                raise RuleError(f"{where}hyperparameters {plain.get(key) or sorted(indexed[key].values())[0]} and "
                                f"{sym} share the keyword {key!r}")
            plain[key] = sym
        else:
            if key in plain:
                raise RuleError(f"{where}hyperparameter {sym} uses keyword {key!r} with an index, but "
                                f"{plain[key]} uses it alone")
            slots = indexed.setdefault(key, {})
            if h.index in slots:
                raise RuleError(f"{where}hyperparameters {slots[h.index]} and {sym} are both {key}[{h.index}]")
            slots[h.index] = sym
    for key, slots in indexed.items():
        if sorted(slots) != list(range(len(slots))):
            raise RuleError(f"{where}keyword {key!r} has indices {sorted(slots)}; a tuple keyword needs 0..n-1")


def check_rule(rule) -> None:
    """Raise :class:`RuleError` naming the first problem of ``rule`` (see the module doc)."""
    check_name(rule.name, "rule name", allow_none=False)
    arrays = {rule.param, rule.grad, *rule.state}
    hypers = set(rule.hyper)
    names: dict[str, sp.Symbol] = {}
    for sym in [rule.param, rule.grad, *rule.state, *rule.hyper, *(lhs for lhs, _ in rule.updates)]:
        if type(sym) not in SYMBOL_TYPES:
            raise RuleError(f"{sym!r} is a {type(sym).__name__}; only plain sympy Symbols are allowed")
        if not sym.name or "\x00" in sym.name:
            raise RuleError(f"symbol name {sym.name!r} is empty or holds a NUL character")
        check_text(sym.name, "symbol name")
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
    for attr in ("doc", "source"):
        check_text(getattr(rule, attr), f"rule {rule.name!r}: {attr}")
    for k, ref in enumerate(rule.references):
        check_text(ref, f"rule {rule.name!r}: reference {k}")
    for key, val in rule.latex_names.items():
        check_text(key, f"rule {rule.name!r}: latex_names key")
        check_text(val, f"rule {rule.name!r}: latex_names[{key!r}]")
    for sym, h in rule.hyper.items():
        check_hyper(sym, h)
    check_hyper_keys(rule.hyper, "")
    state_keys: dict = {}
    for sym, spec in rule.state.items():
        if not isinstance(spec, State):
            raise RuleError(f"state variable {sym}: expected a symopt.State or an initial value")
        check_name(spec.key, f"state variable {sym}: key", allow_none=True)
        check_text(spec.doc, f"state variable {sym}: doc")
        key = spec.key or sym.name
        if key in _RESERVED_STATE_KEYS:
            raise RuleError(f"state variable {sym}: key {key!r} is reserved (state_dict keeps the step count there)")
        if key in state_keys:
            raise RuleError(f"state variables {state_keys[key]} and {sym} share the state_dict key {key!r}")
        state_keys[key] = sym
        init = spec.init
        if init is None:
            raise RuleError(f"state variable {sym} has no initial value")
        if isinstance(init, bool) or not isinstance(init, (int, float, sp.Basic)):
            raise RuleError(f"state variable {sym}: initial value must be a number, an expression in "
                            f"hyperparameters or the param symbol, got {init!r}")
        if not isinstance(init, sp.Basic):
            if not math.isfinite(float(init)):
                raise RuleError(f"state variable {sym}: initial value {init!r} is not finite")
            init = sp.Float(float(init)) if isinstance(init, float) else sp.Integer(int(init))
        if init != rule.param:
            check_expression(init, f"initial value of state {sym}")
            bad = init.free_symbols - hypers
            if bad:
                raise RuleError(f"state variable {sym}: initial value may use only hyperparameters "
                                f"(or be the param itself); it uses {sorted(map(str, bad))}")
    known = set(arrays) | hypers | {t, *SHAPE_SYMBOLS, *FACTOR_SYMBOLS}
    updated_param = False
    iterations = 0
    for i, (lhs, rhs) in enumerate(rule.updates):
        where = f"update {i + 1} ({lhs} = ...)"
        if lhs in hypers:
            raise RuleError(f"{where}: {lhs} is a hyperparameter; hyperparameters are read-only in a rule")
        if lhs == t:
            raise RuleError(f"{where}: the step counter t cannot be assigned")
        check_expression(rhs, where)
        for it in rhs.atoms(Iterate):
            iterations += 1
            bad = (it.free_symbols - it.start.free_symbols) - hypers
            if bad:
                raise RuleError(f"{where}: the iteration's body coefficients and count may use only "
                                f"hyperparameters; it uses {sorted(map(str, bad))}")
        if iterations > 1:
            raise RuleError(f"{where}: a rule may hold one Iterate (one matrix iteration per step)")
        unknown = rhs.free_symbols - known
        if unknown:
            raise RuleError(f"{where}: unknown symbols {sorted(map(str, unknown))}; every symbol must be the "
                            f"param, grad, a state variable, a hyperparameter, an earlier temporary or symopt.t")
        known.add(lhs)
        if lhs == rule.param:
            updated_param = True
    if not updated_param:
        raise RuleError(f"rule {rule.name!r} never updates the param {rule.param}")
    shape_used = set(SHAPE_SYMBOLS) & set().union(*(rhs.free_symbols for _, rhs in rule.updates))
    if shape_used and not iterations:
        raise RuleError(f"rule {rule.name!r} uses {sorted(map(str, shape_used))}, the shape of a matrix view, "
                        f"but holds no Iterate (only matrix rules read params as matrices)")
    factor_used = set(FACTOR_SYMBOLS) & set().union(*(rhs.free_symbols for _, rhs in rule.updates))
    if factor_used and not is_factored_rule(rule):
        raise RuleError(f"rule {rule.name!r} uses {sorted(map(str, factor_used))}, which only factored rules "
                        f"(RowMean/ColMean, row/col states) know")
    if is_factored_rule(rule) and iterations:
        raise RuleError(f"rule {rule.name!r}: a rule is either factored (RowMean/ColMean) or iterates on a matrix")
    for sym in rule.state:
        if not any(lhs == sym for lhs, _ in rule.updates):
            raise RuleError(f"state variable {sym} is never updated; make it a hyperparameter or drop it")
