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


def exact_tensor_step(rule, values: list) -> list:
    """Apply ``rule``'s updates to every element at 50 digits; ``values[i]`` maps the symbols
    (param, grad, state, hyperparameters, t) to element i's mpmath values.  Returns the envs."""
    import mpmath
    import sympy as sp

    from ..rulebook.reduction import Reduction

    envs = [dict(v) for v in values]
    n = len(envs)
    fresh = 0
    for lhs, rhs in rule.updates:
        expr = rhs
        while expr.has(Reduction):
            repl = {}
            for node in _innermost(expr, Reduction):
                arg = node.args[0]
                syms = sorted(arg.free_symbols, key=lambda s: s.name)
                fn = sp.lambdify(syms, arg, modules="mpmath", dummify=True)
                total = mpmath.fsum(fn(*[env.get(s, 0) for s in syms]) for env in envs)
                value = total / n if node.op == "mean" else total
                sym = sp.Dummy(f"red{fresh}")
                fresh += 1
                for env in envs:
                    env[sym] = value
                repl[node] = sym
            expr = expr.xreplace(repl)
        syms = sorted(expr.free_symbols, key=lambda s: s.name)
        fn = sp.lambdify(syms, expr, modules="mpmath", dummify=True)
        for env in envs:
            env[lhs] = fn(*[env.get(s, 0) for s in syms])
    return envs
