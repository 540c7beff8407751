"""Expressions as text and as plain data, without ``eval``.

``sympy.sympify`` and ``parse_expr`` run ``eval`` on their input, so symopt never
hands them user text.  Instead:

* :func:`parse_expression` reads a formula such as ``"beta*m + (1 - beta)*g**2"`` with
  Python's own parser (:func:`ast.parse`, which builds a syntax tree and executes
  nothing) and converts the tree node by node.  Admitted: int and float literals;
  names (plain Symbols; with ``symbols=`` only those given; ``t`` is symopt's step);
  ``+ - * / ** %``; unary ``+ - not``; comparisons, ``and``/``or``; ``a if c else b``
  (a Piecewise); and calls of the functions in :data:`FUNCTIONS` by name (the
  registry's ``parse_names``, ``sqrt``, relations and logic), with positional
  arguments only.  Everything else -- attribute access, subscripts,
  strings, lambdas, comprehensions, keyword arguments, dunder names -- is refused
  with a message naming it.  The result then passes
  :func:`~symopt.rulebook.validate.check_expression`.
* :func:`expr_to_data` / :func:`expr_from_data` turn a validated expression into
  JSON-ready nested lists and back, exactly (floats as float64 values, rationals as
  integer pairs), by looking node names up in the same allowlist -- used by
  checkpoints to store scheduled hyperparameters.

Both read hostile input, so both bound the work SymPy may be asked to do *before* it
evaluates anything (SymPy evaluates exact powers and numeric functions eagerly:
``(9**1000)**1000`` or ``floor(exp(10**100))`` would run for minutes or exhaust memory):
at most :data:`MAX_DEPTH` levels of nesting and :data:`MAX_NODES` nodes; an exact
(rational) exponent at most :data:`MAX_EXPONENT` in size; and every constant that an
operation or function receives, and the result, is checked (by a 15-digit ``evalf``) to be a finite number
inside float64's range, the only values a kernel can use anyway.
"""

from __future__ import annotations

import ast
import math

import sympy as sp

from ..functions import REGISTRY
from .metadata import RuleError
from .metadata import t as T_STEP

__all__ = ["parse_expression", "expr_to_data", "expr_from_data", "FUNCTIONS"]

#: Relations and logic a formula may call by name (they are operators, not registry functions).
_OPERATORS = {"Eq": sp.Eq, "Ne": sp.Ne, "Lt": sp.Lt, "Le": sp.Le, "Gt": sp.Gt, "Ge": sp.Ge,
              "And": sp.And, "Or": sp.Or, "Not": sp.Not}
#: Functions a text formula may call, by the name it uses; ``sqrt(x)`` is the power ``x**(1/2)``.
FUNCTIONS = {**{name: f.sympy for f in REGISTRY for name in f.parse_names}, "sqrt": sp.sqrt, **_OPERATORS}
CONSTANTS = {"pi": sp.pi, "E": sp.E}
MAX_TEXT = 20000
MAX_DEPTH = 100          # nesting of a formula (syntax tree or stored data)
MAX_NODES = 10000        # nodes of stored data
MAX_EXPONENT = 1024      # size of an exact (integer or rational) exponent
MAX_MAGNITUDE = 1e308    # of any constant an operation receives
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.Pow: None, ast.Mod: lambda a, b: sp.Mod(a, b)}
_COMPARE = {ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge, ast.Eq: sp.Eq, ast.NotEq: sp.Ne}


def _constant_problem(e) -> str | None:
    """Why the constant ``e`` may not take part in a formula (None: it may, or it is not a constant)."""
    if not isinstance(e, sp.Expr) or e.free_symbols or isinstance(e, sp.Float):
        return None
    if isinstance(e, sp.Rational):
        if e.p.bit_length() > 1100 or e.q.bit_length() > 1100 or abs(e) > MAX_MAGNITUDE:
            return "is outside float64's range"
        return None
    try:
        v = complex(e.evalf(15, maxn=200))
    except (TypeError, ValueError, ArithmeticError):
        return "has no numeric value"
    if not (math.isfinite(v.real) and math.isfinite(v.imag)) or abs(v) > MAX_MAGNITUDE:
        return "is not finite or outside float64's range"
    return None


def bounded(op, args, where):
    """``op(*args)`` unless that could make SymPy evaluate something huge; ``where(message)`` raises.

    Every constant argument must lie in float64's range (:func:`_constant_problem`), an exact
    exponent of a power at most :data:`MAX_EXPONENT` in size, and so must the result.
    """
    for a in args:
        problem = _constant_problem(a)
        if problem is not None:
            where(f"the constant {str(a)[:40]} {problem}")
    if op in (sp.Pow, _pow) and len(args) == 2 and isinstance(args[1], sp.Rational) and abs(args[1]) > MAX_EXPONENT:
        where(f"the exponent {str(args[1])[:40]} is too large for an exact power (at most {MAX_EXPONENT})")
    out = op(*args)
    problem = _constant_problem(out)
    if problem is not None:
        where(f"the value {str(out)[:40]} {problem}")
    return out


def _pow(a, b):
    return a ** b


class _Converter:
    def __init__(self, text: str, symbols):
        self.text = text
        self.symbols = symbols

    def fail(self, node, what: str):
        col = getattr(node, "col_offset", None)
        where = f" at column {col + 1}" if col is not None else ""
        raise RuleError(f"expression {self.text[:80]!r}{where}: {what}")

    def name(self, node: ast.Name):
        ident = node.id
        if ident.startswith("__"):
            self.fail(node, f"the name {ident!r} is not allowed")
        if ident in CONSTANTS:
            return CONSTANTS[ident]
        if ident in FUNCTIONS:
            self.fail(node, f"{ident!r} is a function; call it as {ident}(...)")
        if self.symbols is None:
            return T_STEP if ident == T_STEP.name else sp.Symbol(ident)
        if ident in self.symbols:
            return self.symbols[ident]
        if ident == T_STEP.name:
            return T_STEP
        self.fail(node, f"unknown name {ident!r}; known: {', '.join(sorted(self.symbols)) or '(none)'}, t")

    def bounded(self, node, op, *args):
        return bounded(op, args, lambda message: self.fail(node, message))

    def __call__(self, node):
        if isinstance(node, ast.Expression):
            return self(node.body)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool):
                return sp.true if v else sp.false
            if isinstance(v, int):
                return sp.Integer(v)
            if isinstance(v, float):
                if not math.isfinite(v):
                    self.fail(node, f"the number {v!r} is not finite")
                return sp.Float(v)
            self.fail(node, f"a {type(v).__name__} literal is not a number")
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                hint = " (use ** for powers)" if isinstance(node.op, ast.BitXor) else ""
                self.fail(node, f"the operator {type(node.op).__name__} is not allowed{hint}")
            op = _BINOPS[type(node.op)] or _pow
            return self.bounded(node, op, self(node.left), self(node.right))
        if isinstance(node, ast.UnaryOp):
            x = self(node.operand)
            if isinstance(node.op, ast.USub):
                return self.bounded(node, lambda a: -a, x)
            if isinstance(node.op, ast.UAdd):
                return x
            if isinstance(node.op, ast.Not):
                return sp.Not(x)
            self.fail(node, f"the operator {type(node.op).__name__} is not allowed")
        if isinstance(node, ast.Compare):
            parts, left = [], self(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                rel = _COMPARE.get(type(op))
                if rel is None:
                    self.fail(node, f"the comparison {type(op).__name__} is not allowed")
                right = self(right_node)
                parts.append(rel(left, right))
                left = right
            return parts[0] if len(parts) == 1 else sp.And(*parts)
        if isinstance(node, ast.BoolOp):
            args = [self(v) for v in node.values]
            return sp.And(*args) if isinstance(node.op, ast.And) else sp.Or(*args)
        if isinstance(node, ast.IfExp):
            return sp.Piecewise((self(node.body), self(node.test)), (self(node.orelse), True))
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS and node.func.id != "Piecewise":
                what = ast.unparse(node.func)[:40]
                self.fail(node, f"calling {what!r} is not allowed; functions: Piecewise, {', '.join(FUNCTIONS)}")
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                self.fail(node, "keyword or starred arguments are not allowed")
            if node.func.id == "Piecewise":
                pairs = []
                for a in node.args:
                    if not isinstance(a, ast.Tuple) or len(a.elts) != 2:
                        self.fail(a, "Piecewise takes (expression, condition) pairs")
                    pairs.append((self(a.elts[0]), self(a.elts[1])))
                return sp.Piecewise(*pairs)
            return self.bounded(node, FUNCTIONS[node.func.id], *[self(a) for a in node.args])
        self.fail(node, f"{type(node).__name__} is not allowed in a formula")


def _ast_depth(tree) -> int:
    depth, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        depth = max(depth, d)
        if depth > MAX_DEPTH:
            break
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return depth


def parse_expression(text: str, symbols=None) -> sp.Expr:
    """A SymPy expression from formula text, without ``eval`` (see the module doc).

    ``symbols``: None (every name becomes a plain ``Symbol``; ``t`` is ``symopt.t``), or
    the Symbols the formula may use (an iterable of Symbols or a ``{name: Symbol}``
    dict).  Raises :class:`~symopt.rulebook.rule.RuleError` naming the offending part.
    """
    from .validate import check_expression

    if not isinstance(text, str):
        raise TypeError(f"expected formula text (str), got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise RuleError(f"expression text is {len(text)} characters long; at most {MAX_TEXT}")
    if symbols is not None:
        symbols = dict(symbols) if isinstance(symbols, dict) else {s.name: s for s in symbols}
        for key, sym in symbols.items():
            if type(sym) not in (sp.Symbol, sp.Dummy):
                raise TypeError(f"symbols[{key!r}] must be a plain sympy Symbol, got {type(sym).__name__}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"expression {text[:80]!r} is not a formula: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise RuleError(f"expression {text[:80]!r} cannot be read: {type(exc).__name__}") from None
    if _ast_depth(tree) > MAX_DEPTH:
        raise RuleError(f"expression {text[:80]!r} is nested more than {MAX_DEPTH} levels deep")
    try:
        expr = _Converter(text, symbols)(tree)
    except RecursionError:
        raise RuleError(f"expression {text[:80]!r} is nested too deeply") from None
    except (TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, RuleError):
            raise
        raise RuleError(f"expression {text[:80]!r}: {exc}") from None
    check_expression(expr, f"expression {text[:80]!r}")
    return expr


# ----------------------------------------------------------------------- exact plain-data form
_DATA_CLASSES = {cls.__name__: cls for cls in (
    sp.Add, sp.Mul, sp.Pow, sp.Piecewise, sp.And, sp.Or, sp.Not, sp.Eq, sp.Ne, sp.Lt, sp.Le, sp.Gt, sp.Ge,
    *(f.sympy for f in REGISTRY if f.in_rules),
)}
_DATA_CLASSES.update({"Equality": sp.Eq, "Unequality": sp.Ne, "StrictLessThan": sp.Lt, "LessThan": sp.Le,
                      "StrictGreaterThan": sp.Gt, "GreaterThan": sp.Ge})


def expr_to_data(expr) -> list:
    """``["Add", arg, ...]`` nested lists; numbers as ``["int", n]``, ``["rat", p, q]``,
    ``["float", x]``; symbols as ``["sym", name]``.  Checked by ``check_expression`` first."""
    from .validate import check_expression

    check_expression(expr, "expression to store")

    def conv(e):
        if isinstance(e, sp.Symbol):
            return ["sym", e.name]
        if e is sp.true or e is sp.false:
            return ["bool", bool(e)]
        if e is sp.pi or e is sp.E:
            return ["const", "pi" if e is sp.pi else "E"]
        if isinstance(e, sp.Integer):
            return ["int", int(e)]
        if isinstance(e, sp.Rational):
            return ["rat", int(e.p), int(e.q)]
        if isinstance(e, sp.Float):
            x = float(e)
            if sp.Float(x, precision=e._prec) != e:
                raise ValueError(f"the constant {e} is not exactly a float64")
            return ["float", x]
        if isinstance(e, sp.functions.elementary.piecewise.ExprCondPair):
            return ["pair", conv(e.expr), conv(e.cond)]
        name = type(e).__name__
        if name not in _DATA_CLASSES:
            raise ValueError(f"{name} cannot be stored")
        return [name, *[conv(a) for a in e.args]]

    return conv(expr)


def _check_data_size(data) -> None:
    """At most :data:`MAX_DEPTH` levels and :data:`MAX_NODES` lists, before anything is built."""
    nodes, stack = 0, [(data, 1)]
    while stack:
        d, depth = stack.pop()
        if isinstance(d, list):
            nodes += 1
            if depth > MAX_DEPTH or nodes > MAX_NODES:
                raise RuleError(f"stored expression is larger than {MAX_NODES} nodes or {MAX_DEPTH} levels")
            stack.extend((x, depth + 1) for x in d)


def expr_from_data(data, symbols=None) -> sp.Expr:
    """The expression :func:`expr_to_data` wrote; ``symbols`` maps names to Symbols
    (default: plain Symbols, ``t`` = symopt.t).  Only allowlisted node names are built."""
    from .validate import check_expression

    table = {} if symbols is None else dict(symbols)
    _check_data_size(data)

    def fail(message):
        raise RuleError(f"stored expression: {message}")

    def conv(d):
        if not isinstance(d, list) or not d or not isinstance(d[0], str):
            raise RuleError(f"stored expression is malformed near {str(d)[:60]}")
        tag, args = d[0], d[1:]
        if tag == "sym" and len(args) == 1 and isinstance(args[0], str):
            name = args[0]
            if name in table:
                return table[name]
            return T_STEP if name == T_STEP.name else sp.Symbol(name)
        if tag == "bool" and args in ([True], [False]):
            return sp.true if args[0] else sp.false
        if tag == "const" and args in (["pi"], ["E"]):
            return sp.pi if args[0] == "pi" else sp.E
        if tag == "int" and len(args) == 1 and type(args[0]) is int:
            return bounded(sp.Integer, args, fail)
        if tag == "rat" and len(args) == 2 and all(type(a) is int for a in args) and args[1] != 0:
            if max(abs(args[0]), abs(args[1])).bit_length() > 1100:
                fail("a rational constant is outside float64's range")
            return bounded(sp.Rational, args, fail)
        if tag == "float" and len(args) == 1 and type(args[0]) in (int, float) and math.isfinite(args[0]):
            return sp.Float(float(args[0]))
        if tag == "pair" and len(args) == 2:
            return (conv(args[0]), conv(args[1]))
        cls = _DATA_CLASSES.get(tag)
        if cls is None:
            raise RuleError(f"stored expression uses {tag!r}, which is not an allowed node")
        return bounded(cls, [conv(a) for a in args], fail)

    try:
        expr = conv(data)
    except RecursionError:
        fail("nested too deeply")
    check_expression(expr, "stored expression")
    return expr
