"""High-precision evaluation of rules with reductions (``TensorSum``, ``GlobalMean``...).

An elementwise rule can be evaluated one element at a time; a rule with reductions
cannot: every update is evaluated for all elements of the tensor at once, and each
reduction node -- innermost first -- is replaced by its exact value (``mpmath.fsum``
over the elements of its argument, evaluated with the values the update sees; divided by
the element count for means).  ``symopt verify`` runs one tensor, so tensor and global
reductions coincide.
"""

from __future__ import annotations


def _innermost(expr, cls):
    return [r for r in expr.atoms(cls) if not r.args[0].has(cls)]


def evaluate_elementwise(expr, envs: list) -> list:
    """``expr`` at every element (``envs[i]`` maps symbols to element i's mpmath values), each
    reduction node -- innermost first -- replaced by its exact value over the elements."""
    import mpmath
    import sympy as sp

    from ..rulebook.reduction import Reduction

    n = len(envs)
    repl_syms = {}
    while expr.has(Reduction):
        repl = {}
        for node in _innermost(expr, Reduction):
            arg = node.args[0]
            syms = sorted(arg.free_symbols, key=lambda s: s.name)
            fn = sp.lambdify(syms, arg, modules="mpmath", dummify=True)
            total = mpmath.fsum(fn(*[env.get(s, 0) for s in syms]) for env in envs)
            sym = sp.Dummy(f"red{len(repl_syms)}")
            repl_syms[sym] = total / n if node.op == "mean" else total
            repl[node] = sym
        expr = expr.xreplace(repl)
    syms = sorted(expr.free_symbols, key=lambda s: s.name)
    fn = sp.lambdify(syms, expr, modules="mpmath", dummify=True)
    return [fn(*[repl_syms[s] if s in repl_syms else env.get(s, 0) for s in syms]) for env in envs]


def exact_tensor_step(rule, values: list) -> list:
    """Apply ``rule``'s updates to every element at 50 digits; ``values[i]`` maps the symbols
    (param, grad, state, hyperparameters, t) to element i's mpmath values.  Returns the envs."""
    envs = [dict(v) for v in values]
    for lhs, rhs in rule.updates:
        for env, value in zip(envs, evaluate_elementwise(rhs, envs)):
            env[lhs] = value
    return envs
