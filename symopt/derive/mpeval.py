"""High-precision evaluation of SymPy expressions with mpmath (the independent reference).

:func:`mp_eval` walks the expression tree itself (no ``lambdify``, no ``eval``)
at ``dps`` decimal digits -- 1100 by default, enough to evaluate textbook forms
such as ``1 − 1/(1 + e^{−1000})`` without cancellation.  Functions evaluate with
the registry's mpmath evaluation (:mod:`symopt.functions`); anything else raises
``TypeError`` naming it.
"""

from __future__ import annotations

import mpmath
import sympy as sp

from ..functions import registered

__all__ = ["mp_eval"]


def _number(e):
    if e.is_Integer:
        return mpmath.mpf(int(e))
    if e.is_Rational:
        return mpmath.mpf(int(e.p)) / int(e.q)
    if e.is_Float:
        return mpmath.mpf(e._mpf_) if hasattr(e, "_mpf_") else mpmath.mpf(str(e))
    return mpmath.mpf(sp.N(e, mpmath.mp.dps + 10))


def _ev(e, env):
    if e in env:
        return env[e]
    if e.is_Number or (e.is_number and e.is_Atom):
        return _number(e)
    if e is sp.true or e == sp.true:
        return True
    if e is sp.false or e == sp.false:
        return False
    if e.is_Add:
        return mpmath.fsum(_ev(a, env) for a in e.args)
    if e.is_Mul:
        out = mpmath.mpf(1)
        for a in e.args:
            out *= _ev(a, env)
        return out
    if e.is_Pow:
        b, x = e.args
        if x == sp.S.Half:
            return mpmath.sqrt(_ev(b, env))
        if x.is_Integer:
            return _ev(b, env) ** int(x)
        return _ev(b, env) ** _ev(x, env)
    f = e.func
    fn = registered(e)
    if fn is not None:
        return fn.mpmath(*[_ev(a, env) for a in fn.full_args(e.args)])
    if f is sp.Piecewise:
        for val, cond in e.args:
            if _ev(cond, env):
                return _ev(val, env)
        return mpmath.nan
    if isinstance(e, sp.Rel):
        a, b = _ev(e.lhs, env), _ev(e.rhs, env)
        return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[e.rel_op]
    if f is sp.And:
        return all(_ev(a, env) for a in e.args)
    if f is sp.Or:
        return any(_ev(a, env) for a in e.args)
    if f is sp.Not:
        return not _ev(e.args[0], env)
    if e.is_number:
        return _number(e)
    raise TypeError(f"mp_eval: cannot evaluate {getattr(f, '__name__', f)} in {sp.sstr(e)[:80]}")


def mp_eval(expr, values: dict, dps: int = 1100):
    """``expr`` at ``values`` (symbol -> number), as an ``mpmath.mpf`` computed at ``dps`` digits."""
    with mpmath.workdps(dps):
        env = {}
        for s, v in values.items():
            env[s] = _number(v) if isinstance(v, sp.Basic) else mpmath.mpf(v)
        return +_ev(sp.sympify(expr), env)
