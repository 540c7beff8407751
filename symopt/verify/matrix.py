"""High-precision evaluation of matrix rules (an :class:`~symopt.rulebook.matrix.Iterate`).

The updates are evaluated for every element of one small tensor at 50 digits, as for
reductions (:mod:`.reductions`); an ``Iterate`` node is evaluated as written: its start
value per element, read as the ``rows × cols`` matrix (C order, the param's ``d0 × (d1⋯)``
view), then ``count`` applications of its body with mpmath matrices (sums, products,
transposes and powers evaluated directly, never through the planner's polynomial form or
its choice of the smaller Gram matrix).
"""

from __future__ import annotations

from .reductions import evaluate_elementwise


def _matrix_value(body, var, current, scalars):
    """``body`` (a SymPy matrix expression in ``var``) at ``var = current`` (an mpmath matrix)."""
    import mpmath
    import sympy as sp

    if body == var:
        return current
    if isinstance(body, sp.Transpose):
        return _matrix_value(body.arg, var, current, scalars).T
    if isinstance(body, sp.MatAdd):
        out = None
        for term in body.args:
            value = _matrix_value(term, var, current, scalars)
            out = value if out is None else out + value
        return out
    if isinstance(body, sp.MatMul):
        coeff, out = mpmath.mpf(1), None
        for factor in body.args:
            if isinstance(factor, sp.MatrixExpr):
                value = _matrix_value(factor, var, current, scalars)
                out = value if out is None else out * value
            else:
                coeff *= scalars(factor)
        return out * coeff
    if isinstance(body, sp.MatPow):
        base = _matrix_value(body.base, var, current, scalars)
        out = base
        for _ in range(int(body.exp) - 1):
            out = out * base
        return out
    raise TypeError(f"cannot evaluate {type(body).__name__} in an iteration body")


def exact_matrix_step(rule, values: list, shape: tuple) -> list:
    """Apply ``rule``'s updates to every element of a tensor of ``shape`` at 50 digits;
    ``values[i]`` maps the symbols to element i's mpmath values (C order).  Returns the envs."""
    import mpmath
    import sympy as sp

    from ..rulebook.matrix import Iterate, cols, rows

    nrows = shape[0]
    ncols = len(values) // nrows
    envs = [{**v, rows: mpmath.mpf(nrows), cols: mpmath.mpf(ncols)} for v in values]
    for lhs, rhs in rule.updates:
        repl = {}
        for k, it in enumerate(rhs.atoms(Iterate)):
            start = evaluate_elementwise(it.start, envs)
            x = mpmath.matrix(nrows, ncols)
            for i, v in enumerate(start):
                x[i // ncols, i % ncols] = v

            def scalars(expr, env=envs[0]):
                syms = sorted(expr.free_symbols, key=lambda s: s.name)
                return sp.lambdify(syms, expr, modules="mpmath", dummify=True)(*[env[s] for s in syms])

            for _ in range(int(scalars(it.count))):
                x = _matrix_value(it.body, it.var, x, scalars)
            sym = sp.Dummy(f"iterate{k}")
            for i, env in enumerate(envs):
                env[sym] = x[i // ncols, i % ncols]
            repl[it] = sym
        for env, value in zip(envs, evaluate_elementwise(rhs.xreplace(repl), envs)):
            env[lhs] = value
    return envs
