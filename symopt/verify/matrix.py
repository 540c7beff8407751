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


def _mp_matrix_value(expr, mats: dict, scalars):
    """A :class:`~symopt.rulebook.preconditioned.Preconditioned` matrix expression at the mpmath
    matrices ``mats`` (symbol -> matrix): sums, products, transposes, ``InverseRoot`` by
    ``mpmath.eigsy`` (``V diag(λ^{-1/p}) Vᵀ``)."""
    import mpmath
    import sympy as sp

    from ..rulebook.preconditioned import InverseRoot

    if expr in mats:
        return mats[expr]
    if isinstance(expr, sp.Transpose):
        return _mp_matrix_value(expr.arg, mats, scalars).T
    if isinstance(expr, sp.MatAdd):
        parts = [_mp_matrix_value(a, mats, scalars) for a in expr.args]
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out
    if isinstance(expr, sp.MatMul):
        coeff, out = mpmath.mpf(1), None
        for f in expr.args:
            if isinstance(f, sp.MatrixExpr):
                value = _mp_matrix_value(f, mats, scalars)
                out = value if out is None else out * value
            else:
                coeff *= scalars(f)
        return out * coeff
    if isinstance(expr, InverseRoot):
        e, q = mpmath.eigsy(_mp_matrix_value(expr.base, mats, scalars))
        p = scalars(expr.root)
        n = e.rows
        d = mpmath.matrix(n, n)
        for i in range(n):
            d[i, i] = e[i] ** (-1 / p)
        return q * d * q.T
    raise TypeError(f"cannot evaluate {type(expr).__name__} in a preconditioned rule")


def exact_preconditioned_step(rule, values: list, shape: tuple, mats: dict) -> tuple:
    """Apply ``rule``'s updates (one :class:`~symopt.rulebook.preconditioned.Preconditioned`) to a
    tensor of ``shape`` at 50 digits from the matrix states ``mats`` (key -> float array; None at
    the tensor's first step: their initial values).  Returns the envs and the new matrix states
    (key -> mpmath matrix)."""
    import mpmath
    import sympy as sp

    from ..rulebook.matrix import cols, rows
    from ..rulebook.preconditioned import Preconditioned

    nrows = shape[0]
    ncols = len(values) // nrows
    envs = [{**v, rows: mpmath.mpf(nrows), cols: mpmath.mpf(ncols)} for v in values]
    out_mats: dict = {}

    def scalars(expr, env=envs[0]):
        syms = sorted(expr.free_symbols, key=lambda s: s.name)
        return sp.lambdify(syms, expr, modules="mpmath", dummify=True)(*[env[s] for s in syms])

    for lhs, rhs in rule.updates:
        repl = {}
        for k, node in enumerate(rhs.atoms(Preconditioned)):
            start = evaluate_elementwise(node.start, envs)
            g = mpmath.matrix(nrows, ncols)
            for i, v in enumerate(start):
                g[i // ncols, i % ncols] = v
            current = {node.var: g}
            for st in node.states:
                n = nrows if st.sym.shape[0] == rows else ncols
                if mats is None:
                    current[st.sym] = mpmath.eye(n) * scalars(st.init_diagonal())
                else:
                    current[st.sym] = mpmath.matrix(mats[st.key].tolist())
            for st in node.states:
                if bool(scalars(sp.Piecewise((1, st.when), (0, True)))):
                    current[st.sym] = _mp_matrix_value(st.update, current, scalars)
                out_mats[st.key] = current[st.sym]
            value = _mp_matrix_value(node.value, current, scalars)
            sym = sp.Dummy(f"preconditioned{k}")
            for i, env in enumerate(envs):
                env[sym] = value[i // ncols, i % ncols]
            repl[node] = sym
        for env, v in zip(envs, evaluate_elementwise(rhs.xreplace(repl), envs)):
            env[lhs] = v
    return envs, out_mats
