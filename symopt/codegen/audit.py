"""A last check of generated source before it is written or imported: the shape of a module.

The sanitizer (:mod:`.names`) and rule validation keep user text out of code; this
audit proves it on the result, without running anything (``compile`` and
:mod:`ast` only).  A generated module may hold, at module level, only

* its docstring;
* ``import math``, ``import numba``, ``import numpy as np``, ``from numba import
  types``, ``from numba.extending import intrinsic``, ``from scipy.linalg import blas``
  (matrix rules); for the array backends ``import torch``, ``import jax``, ``import
  jax.numpy as jnp``, ``from jax.scipy import special``, ``from jax import lax`` (matrix rules),
  ``from torch import linalg``, ``from jax.numpy import linalg`` (preconditioned rules);
* assignments of a *literal* (``ast.literal_eval`` reads it) to a plain name;
* function definitions decorated with ``intrinsic`` or ``numba.njit(<constants>)``.

Inside functions, every name read is a local (an argument or an assignment of
that function or an enclosing one), a module-level definition, an import above
or one of :data:`SAFE_BUILTINS`; no local rebinds an import or a module-level name
that functions call; no function assigns to one of its own arguments (so a state
buffer can never be overwritten by a kernel local of the same name); no name is a dunder; no
``global``, ``import``, ``lambda``, ``with``, ``try``, class, comprehension, ``del``,
``yield``, ``await``, star-args or decorator other than the above.

Attributes are an allow-list of exactly what generated code uses: of an imported module
(a plain name) only the names of :data:`MODULE_ATTRIBUTES` (the
dtypes and array constructors the templates write, ``numba.njit``/``prange``,
the ``np.``/``math.``/``torch.``/``jnp.`` functions the function registry's printers write, SciPy's
``syrk``/``gemm``); of anything else (a local, an item, an expression) only
:data:`VALUE_ATTRIBUTES` (``x.shape``, ``params[0].dtype``, the LLVM builder calls of the
pointer and atomic intrinsics, ``errors.append``), and an array argument's address ``x.ctypes.data``.  So even a sanitizer bug, or a file planted in a
cache, could not reach ``__import__``, ``eval``, ``open``, ``x.__class__``,
``numba.core.config.os.system`` or ``np.load``.
"""

from __future__ import annotations

import ast
import re

from ..functions import REGISTRY
from ..rulebook.metadata import RuleError

#: Builtins generated code may call.
SAFE_BUILTINS = frozenset({"range", "abs", "max", "min", "float", "int", "bool", "len", "tuple", "True", "False",
                           "None"})
_IMPORTS = {("math", None): "math", ("numba", None): "numba", ("numpy", "np"): "np", ("torch", None): "torch",
            ("jax", None): "jax", ("jax.numpy", "jnp"): "jnp"}
_FROM_IMPORTS = {("numba", "types", None): "types", ("numba.extending", "intrinsic", None): "intrinsic",
                 ("scipy.linalg", "blas", None): "blas", ("scipy.linalg", "lapack", None): "lapack",
                 ("jax.scipy", "special", None): "special", ("jax", "lax", None): "lax",
                 ("torch", "linalg", None): "linalg", ("jax.numpy", "linalg", None): "linalg"}


def _registry_calls(module: str) -> set:
    """The ``<module>.<name>`` calls the registry's templates print (Numba, scalar, torch, JAX)."""
    pattern = re.compile(rf"\b{module}\.([A-Za-z]\w*)\(")
    return {m for f in REGISTRY for text in (f.numba, f.scalar, f.torch, f.jax) for m in pattern.findall(text or "")}


#: The attributes of each imported module generated code may use (all of them a value or a call).
MODULE_ATTRIBUTES = {
    "np": frozenset({"float32", "float64", "int32", "int64", "inf", "nan", "zeros", "empty", "full", "arange", "sqrt", "exp", "log",
                     "multiply", "argsort", "sum", "take"}
                    | _registry_calls("np")),
    "math": frozenset({"sqrt", "exp", "log", "inf", "nan", "pi", "e", "prod"} | _registry_calls("math")),
    "numba": frozenset({"njit", "prange"}),
    "types": frozenset({"CPointer", "float32", "float64", "int32", "int64",
                        # the array view of the optimizer modules (templates/_util.jinja array_view)
                        "Array", "UniTuple", "intp"}),
    "intrinsic": frozenset(),
    # the matrix rules' BLAS: symmetric rank-k products and general products (matrix_module template)
    "blas": frozenset({"ssyrk", "dsyrk", "sgemm", "dgemm"}),
    # the preconditioned rules' symmetric eigendecompositions and QR factorizations
    # (preconditioned_module template)
    "lapack": frozenset({"ssyevd", "dsyevd", "sgeqrf", "dgeqrf", "sorgqr", "dorgqr"}),
    # the array backends (array_module template and the registry's torch/JAX templates)
    # (movedim/moveaxis: a factored param's matrix axes moved last and back, array_factored_module template)
    "torch": frozenset({"float64", "full", "sum", "where", "sqrt", "clamp", "as_tensor", "movedim"} | _registry_calls("torch")
                       # the preconditioned rules (array_preconditioned_module template)
                       | {"tensordot", "flip", "argsort", "index_select", "mean", "square"}),
    "jnp": frozenset({"asarray", "sum", "where", "sqrt", "exp", "log", "int32", "moveaxis"} | _registry_calls("jnp")
                     | {"tensordot", "argsort", "take", "mean", "square"}),
    "jax": frozenset(),
    # the matrix rules' iteration (array_matrix_module template), the preconditioned rules' flags
    "lax": frozenset({"fori_loop", "cond"}),
    # the preconditioned rules' eigendecompositions and QR (array_preconditioned_module template)
    "linalg": frozenset({"eigh", "qr"}),
    "special": frozenset(_registry_calls("special")),
}
#: Attributes of locals generated code uses: array shapes, the LLVM builder and context of the
#: pointer and atomic intrinsics (an array's data pointer in LLVM IR), the list of constraint messages, element counts of the one-tensor steps and
#: the matrix rules' workspace views.  They may be taken of any expression that is not a module
#: (``params[0].dtype``, ``scal[0].to(dt)``): none of them reaches code.
VALUE_ATTRIBUTES = frozenset({"shape", "bitcast", "inttoptr", "get_value_type", "append", "reshape", "size",
                              # the atomic intrinsics of the threaded kernels' barrier (LLVM IR)
                              "make_array", "data", "gep", "atomic_rmw", "load_atomic",
                              # the array view: an array struct filled in LLVM IR (templates/_util.jinja)
                              "get_constant", "populate_array", "make_tuple", "mul", "extract_value", "_getvalue",
                              "count", "bitwidth",
                              # tensors and arrays of the array backends
                              "dtype", "to", "numel", "device",
                              # the matrix rules of the array backends: a transpose, a 0-d tensor like scal
                              "T", "new_full"})
_ALLOWED_NODES = (
    ast.FunctionDef, ast.arguments, ast.arg, ast.Assign, ast.AugAssign, ast.Return, ast.If, ast.For,
    ast.Expr, ast.Name, ast.Attribute, ast.Call, ast.keyword, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
    ast.While, ast.Break,
    ast.IfExp, ast.Subscript, ast.Slice, ast.Tuple, ast.List, ast.Dict, ast.Constant, ast.Load, ast.Store,
    ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.expr_context, ast.Pass,
)


class AuditError(RuleError):
    """Generated source does not have the shape of a generated module."""


def _fail(node, message: str):
    line = getattr(node, "lineno", "?")
    raise AuditError(f"generated code, line {line}: {message}")


def _check_private(name: str, node) -> None:
    # User identifiers never start with "_" (names.identifier); the generator's own helpers do
    # (_view, _e0, reduction scratch like _ext): a dunder name is never generated.
    if name.startswith("__"):
        _fail(node, f"the name {name!r} is a dunder name")


def _decorator_ok(dec) -> bool:
    if isinstance(dec, ast.Name):
        return dec.id == "intrinsic"
    if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) and dec.func.attr == "njit"
            and isinstance(dec.func.value, ast.Name) and dec.func.value.id == "numba" and not dec.args):
        return all(k.arg is not None and _constant_option(k.value) for k in dec.keywords)
    return False


def _constant_option(node) -> bool:
    """A literal option: a constant, or a set of string constants (``fastmath={"reassoc"}``)."""
    if isinstance(node, ast.Constant):
        return True
    return isinstance(node, ast.Set) and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                             for e in node.elts)


def _own_nodes(fn: ast.FunctionDef):
    """Nodes of ``fn``'s body (docstring excluded), not descending into nested functions."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    stack = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef):
            continue
        if _is_address(node):                    # x.ctypes.data: only the root name is checked further
            stack.append(node.value.value)
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _locals(fn: ast.FunctionDef) -> set:
    """Names bound in ``fn`` itself: arguments, assignment and loop targets, nested defs."""
    out = {a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)}
    for node in _own_nodes(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.FunctionDef):
            out.add(node.name)
    return out


def _check_function(fn: ast.FunctionDef, module_names: set, protected: set, enclosing: set) -> None:
    if fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.args.posonlyargs or fn.args.defaults:
        _fail(fn, f"function {fn.name!r} has a signature generated code never uses")
    arguments = set()
    for a in fn.args.args:
        _check_private(a.arg, a)
        arguments.add(a.arg)
    local = _locals(fn)
    clash = local & protected
    if clash:
        _fail(fn, f"function {fn.name!r} rebinds names the module imports or calls: {sorted(clash)}")
    visible = local | enclosing
    for node in _own_nodes(fn):
        if not isinstance(node, _ALLOWED_NODES):
            _fail(node, f"{type(node).__name__} is not something generated code contains")
        if isinstance(node, ast.FunctionDef):
            if node.decorator_list:
                _fail(node, "a nested function is decorated")
            _check_function(node, module_names, protected, visible)
        elif isinstance(node, ast.Expr) and not isinstance(node.value, ast.Call):
            _fail(node, "a bare expression statement")
        elif isinstance(node, ast.Name):
            _check_private(node.id, node)
            if isinstance(node.ctx, ast.Store) and node.id in arguments:
                _fail(node, f"function {fn.name!r} assigns to its own argument {node.id!r} (a generated "
                            f"local collides with a name derived from the rule)")
            if isinstance(node.ctx, ast.Load) and not (node.id in visible or node.id in module_names
                                                       or node.id in SAFE_BUILTINS):
                _fail(node, f"the name {node.id!r} is neither local, module-level nor a safe builtin")
        elif isinstance(node, ast.Attribute):
            _check_attribute(node, visible)


def _is_address(node) -> bool:
    """``<local>.ctypes.data`` with a plain local name (not a module) at its root."""
    return (isinstance(node, ast.Attribute) and node.attr == "data" and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ctypes" and isinstance(node.value.value, ast.Name)
            and node.value.value.id not in MODULE_ATTRIBUTES)


def _check_attribute(node: ast.Attribute, visible: set) -> None:
    """One level of attribute on a plain name, from the allow-lists (see the module doc); the one
    two-level chain is an array argument's address, ``<local>.ctypes.data`` (an int)."""
    if _is_address(node):
        return
    if not isinstance(node.value, ast.Name):
        if node.attr not in VALUE_ATTRIBUTES:
            _fail(node, f"the attribute {node.attr!r} is taken of an expression and is not something generated "
                        f"code uses")
        return
    owner = node.value.id
    if owner in MODULE_ATTRIBUTES and owner not in visible:
        if node.attr not in MODULE_ATTRIBUTES[owner]:
            _fail(node, f"{owner}.{node.attr} is not something generated code uses")
    elif node.attr not in VALUE_ATTRIBUTES:
        _fail(node, f"the attribute {node.attr!r} of {owner!r} is not something generated code uses")


def audit_module(text: str, filename: str = "<generated>") -> None:
    """Raise :class:`AuditError` unless ``text`` compiles and has a generated module's shape."""
    try:
        compile(text, filename, "exec", dont_inherit=True)
        tree = ast.parse(text, filename)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise AuditError(f"generated code does not compile: {type(exc).__name__}: {exc}") from None
    module_names: set = set()
    functions = []
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    for stmt in body:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                bound = _IMPORTS.get((alias.name, alias.asname))
                if bound is None:
                    _fail(stmt, f"import of {alias.name!r}")
                module_names.add(bound)
        elif isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                bound = _FROM_IMPORTS.get((stmt.module, alias.name, alias.asname))
                if bound is None or stmt.level:
                    _fail(stmt, f"import of {alias.name!r} from {stmt.module!r}")
                module_names.add(bound)
        elif isinstance(stmt, ast.Assign):
            if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                _fail(stmt, "a module-level assignment to something other than one name")
            _check_private(stmt.targets[0].id, stmt)
            try:
                ast.literal_eval(stmt.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                _fail(stmt, f"{stmt.targets[0].id} is not assigned a literal")
            module_names.add(stmt.targets[0].id)
        elif isinstance(stmt, ast.FunctionDef):
            if not all(_decorator_ok(d) for d in stmt.decorator_list):
                _fail(stmt, f"function {stmt.name!r} has a decorator generated code never uses")
            _check_private(stmt.name, stmt)
            module_names.add(stmt.name)
            functions.append(stmt)
        else:
            _fail(stmt, f"a module-level {type(stmt).__name__} statement")
    # Names no function may rebind: the imports, and module-level names some function reads.
    protected = {n for n in module_names if n in {"math", "numba", "np", "types", "intrinsic", "blas", "torch", "jax",
                                                  "jnp", "special", "lax", "linalg"}}
    for fn in functions:
        for node in _own_nodes(fn):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in module_names:
                protected.add(node.id)
    for fn in functions:
        _check_function(fn, module_names, protected, set())
