"""Reverse-mode accumulation over a SymPy expression DAG.

:func:`reverse_sweep` turns a scalar expression into straight-line code, still as
SymPy (no strings):

1. **Forward sweep.**  SymPy trees are hash-consed, so equal sub-expressions are
   one node: a post-order walk visits each distinct node once and gives it a
   temporary ``v_k = op(children)``.
2. **Reverse sweep.**  Adjoints ``ā`` flow from the root (``ā_root = 1``) to the
   leaves in reverse topological order.  Each node adds ``ā_node · ∂node/∂child``
   to each child that depends on an input, with the local partial written in
   terms of forward temporaries (``∂ (u·w)/∂u = w``, products of four or more
   factors use prefix/suffix products; a function's partials and its convention
   at kinks come from the registry, :mod:`symopt.functions`: ``∂ exp(u)/∂u = v``,
   ``∂ tanh(u)/∂u = 1 − v²``).  A node's adjoint is the sum of what its parents
   sent (micrograd's ``+=``), written once after the last parent, so the code is
   in SSA form.

The gradient therefore costs a bounded multiple of the forward code (each node's
local partials cost a few operations) instead of one ``sympy.diff`` per symbol,
whose results share nothing.  The plan stage counts the operations of both sweeps
(:class:`symopt.codegen.plan_gradients.TermGroup`).

Inputs are renamed to internal symbols before the walk (``p0, p1…`` by the
caller), so generated identifiers never come from user text.  *Parameters* are
symbols that stand for constants (numbers read from a table at run time): they
take part in the forward sweep but get no adjoint.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from ..functions import registered, supported_text

__all__ = ["ReverseSweep", "check_gradient_input", "constant", "postorder", "reverse_sweep"]


class ReverseSweep(NamedTuple):
    expr: sp.Expr            # the expression in internal symbols
    inputs: tuple            # differentiated symbols, in order
    params: tuple            # constant symbols (no adjoint)
    forward: tuple           # ((v_k, expr), ...) forward sweep
    value: sp.Expr           # the function value (a forward temporary, input, param or number)
    reverse: tuple           # ((a_k, expr), ...) reverse sweep
    grads: tuple             # one expression per input: ∂f/∂input


def describe(x, limit: int = 80) -> str:
    """Short text of an expression for error messages."""
    text = sp.sstr(x) if isinstance(x, sp.Basic) else repr(x)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_gradient_input(expr, wrt) -> tuple:
    """Validate ``expr`` and ``wrt``; return ``(expr, tuple_of_symbols)`` or raise.

    ``expr`` must be a scalar, real SymPy expression (not a matrix, list, relation
    or boolean) built from ``+ - * / **`` and the registry's functions; ``wrt`` one
    Symbol or a sequence of distinct Symbols, each occurring in ``expr``; every free
    symbol of ``expr`` must be in ``wrt``.
    """
    if isinstance(expr, (sp.MatrixBase, sp.MatrixExpr, sp.NDimArray, list, tuple)):
        shape = getattr(expr, "shape", None) or (len(expr),)
        raise TypeError(f"symopt.gradient needs a scalar expression, got a non-scalar {type(expr).__name__} "
                        f"of shape {tuple(shape)}")
    if isinstance(expr, sp.Rel) or (isinstance(expr, sp.logic.boolalg.Boolean) and not isinstance(expr, sp.Expr)):
        raise TypeError(f"symopt.gradient needs a scalar expression, got the relation/boolean {describe(expr)}")
    if not isinstance(expr, sp.Expr):
        raise TypeError(f"symopt.gradient needs a SymPy expression, got {type(expr).__name__}: {expr!r}")
    if isinstance(wrt, sp.Symbol):
        wrt = (wrt,)
    elif isinstance(wrt, (str, bytes, sp.Basic)) or not hasattr(wrt, "__iter__"):
        raise TypeError(f"wrt must be a sympy Symbol or a sequence of Symbols, got {type(wrt).__name__}")
    wrt = tuple(wrt)
    if not wrt:
        raise ValueError("wrt is empty: name at least one symbol to differentiate with respect to")
    for i, s in enumerate(wrt):
        if not isinstance(s, sp.Symbol):
            raise TypeError(f"wrt[{i}] must be a sympy Symbol, got {type(s).__name__}: {describe(s)}")
    seen: set = set()
    dups = sorted({s.name for s in wrt if s in seen or seen.add(s)})
    if dups:
        raise ValueError(f"wrt lists these symbols more than once: {', '.join(dups)}")
    free = expr.free_symbols
    missing = [s.name for s in wrt if s not in free]
    if missing:
        raise ValueError(f"symbols in wrt do not occur in the expression: {', '.join(missing)}")
    unbound = sorted(str(s) for s in free - set(wrt))
    if unbound:
        raise ValueError(f"the expression has free symbols not in wrt: {', '.join(unbound)} "
                         f"(substitute numbers for them, or add them to wrt)")
    stack = [expr]
    visited: set = set()
    while stack:
        node = stack.pop()
        if node in visited:
            continue
        visited.add(node)
        if node.is_Symbol:
            continue
        if node.is_number:
            if not (node.is_extended_real and node.is_finite):
                raise ValueError(f"the expression contains the non-real or non-finite constant {describe(node)}")
            continue
        if not (type(node) in (sp.Add, sp.Mul, sp.Pow) or registered(node) is not None):
            name = getattr(node.func, "__name__", type(node).__name__)
            raise TypeError(f"symopt.gradient does not support {name} (in {describe(node)}); "
                            f"supported: {supported_text()}")
        stack.extend(node.args)
    return expr, wrt


def constant(node) -> sp.Expr:
    """A numeric sub-expression as one number (irrational constants become 30-digit Floats)."""
    if node.is_Rational or node.is_Float:
        return node
    return sp.Float(node.evalf(30), 30)


class _Builder:
    def __init__(self):
        self.forward: list = []
        self.reverse: list = []
        self.nv = 0
        self.na = 0

    def vsym(self) -> sp.Symbol:
        s = sp.Symbol(f"v{self.nv}")
        self.nv += 1
        return s

    def rev(self, expr) -> sp.Expr:
        """Emit ``a_k = expr`` unless ``expr`` is an atom; return what to use in its place."""
        if expr.is_Atom:
            return expr
        s = sp.Symbol(f"a{self.na}")
        self.na += 1
        self.reverse.append((s, expr))
        return s


def postorder(root) -> list:
    """Distinct non-constant, non-symbol nodes below ``root``, children first (iterative)."""
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if node in seen or node.is_number or node.is_Symbol:
            continue
        seen.add(node)
        stack.append((node, True))
        for a in reversed(node.args):
            if a not in seen and not a.is_number and not a.is_Symbol:
                stack.append((a, False))
    return order


def _mul_partials(b: _Builder, factors: list) -> list:
    """∂(f_1⋯f_m)/∂f_i for each i, as products of the other factors."""
    m = len(factors)
    if m == 1:
        return [sp.Integer(1)]
    if m <= 3:
        return [sp.Mul(*(factors[:i] + factors[i + 1:])) for i in range(m)]
    prefix = [factors[0]]                    # prefix[i] = f_1 ... f_{i+1}
    for f in factors[1:-1]:
        prefix.append(b.rev(prefix[-1] * f))
    suffix = [factors[-1]]                   # built backwards: f_m, f_{m-1} f_m, ...
    for f in reversed(factors[1:-1]):
        suffix.append(b.rev(f * suffix[-1]))
    suffix.reverse()                         # suffix[i] = f_{i+1} ... f_m
    out = [suffix[1]]
    for i in range(1, m - 1):
        out.append(prefix[i - 1] * suffix[i + 1])
    out.append(prefix[m - 2])
    return out


def _local(node, v, args, active) -> list:
    """``[(child_index, ∂node/∂child), ...]`` for active children, in forward symbols."""
    f = node.func
    if f is sp.Add:
        return [(i, sp.Integer(1)) for i in active]
    if f is sp.Pow:
        base, ex = args
        out = []
        if 0 in active:
            if ex.is_number:
                if ex == 2:
                    d = 2 * base
                elif ex == -1:
                    d = -v**2
                elif ex == sp.S.Half:
                    d = 1 / (2 * v)
                else:
                    d = ex * base**(ex - 1)
            else:
                d = ex * base**(ex - 1)
            out.append((0, d))
        if 1 in active:
            out.append((1, v * sp.log(base)))
        return out
    fn = registered(node)
    if fn is None:
        raise TypeError(f"symopt.gradient does not support {f.__name__}; supported: {supported_text()}")
    partials = fn.derivative(v, *args)
    return [(i, partials[i]) for i in active]


def reverse_sweep(expr, inputs, params=()) -> ReverseSweep:
    """Forward and reverse sweeps of ``expr`` (in internal symbols) w.r.t. ``inputs``.

    ``params`` are symbols treated as constants.  ``expr`` must already be
    validated (see :func:`check_gradient_input`).
    """
    inputs = tuple(inputs)
    params = tuple(params)
    b = _Builder()
    sym: dict = {s: s for s in (*inputs, *params)}
    nodes = postorder(expr)
    active: set = set(inputs)

    def ref(e):
        return constant(e) if e.is_number else sym[e]

    for node in nodes:
        args = [ref(a) for a in node.args]
        v = b.vsym()
        b.forward.append((v, node.func(*args)))
        sym[node] = v
        if any(a in active for a in node.args):
            active.add(node)

    value = ref(expr)
    contrib: dict = {expr: [sp.Integer(1)]}
    for node in reversed(nodes):
        parts = contrib.pop(node, None)
        if not parts:
            continue
        adj = b.rev(sp.Add(*parts))
        args = [ref(a) for a in node.args]
        live = [i for i, a in enumerate(node.args) if a in active]
        if node.func is sp.Mul:
            coeff = sp.Mul(*[args[i] for i in range(len(args)) if i not in live])
            scaled = adj * coeff
            if len(live) > 1:
                scaled = b.rev(scaled)
            for i, d in zip(live, _mul_partials(b, [args[i] for i in live])):
                contrib.setdefault(node.args[i], []).append(scaled * d)
            continue
        for i, d in _local(node, sym[node], args, live):
            contrib.setdefault(node.args[i], []).append(adj * d)
    grads = tuple(sp.Add(*contrib[s]) if s in contrib else sp.Integer(0) for s in inputs)
    return ReverseSweep(expr=expr, inputs=inputs, params=params, forward=tuple(b.forward), value=value,
                        reverse=tuple(b.reverse), grads=grads)
