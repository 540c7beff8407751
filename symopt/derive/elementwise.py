"""Derivatives of elementwise losses and activations: the forms a kernel may run.

For a spec (:class:`symopt.rulebook.nn.spec.Elementwise`), :func:`derivation` gives:

1. ``raw = ∂ kernel_expr / ∂x`` by ``sympy.diff`` (the step function pinned to
   ``H(0) = 0``); ``reference = ∂ expr / ∂x`` from the textbook form.
2. Candidates: ``raw``, ``simplify(raw)``, ``factor(raw)``, ``raw`` simplified branch by
   branch (keeps a piecewise stable form piecewise), and for activations forms written
   in the output ``y = f(x)`` (``1 − y²`` for tanh, ``y(1 − y)`` for the
   sigmoid), found by substituting ``f(x) → y`` or ``x → f⁻¹(y)``.
3. The check points (:func:`check_points`) where the candidates are compared with
   ``reference``.

The plan stage (:func:`symopt.codegen.plan_gradients.plan_elementwise`) keeps the
fewest-ops candidate that matches ``reference`` at every check point and builds the
kernel bodies from it.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from .simplify import fold_constants, pin_heaviside, use_expm1_log1p

__all__ = ["Derivation", "check_points", "derivation"]

_X_POINTS = (0, sp.Rational(1, 10**8), sp.Rational(1, 2), 1, sp.Rational(5, 2), 7, 30, 1000)
_TARGETS = {
    "real": (0, -2, sp.Rational(1, 3)),
    "probability": (0, sp.Rational(1, 4), 1),
    "sign": (-1, 1),
}


class Derivation(NamedTuple):
    raw: sp.Expr              # sympy.diff of the kernel form (step function pinned)
    reference: sp.Expr        # sympy.diff of the textbook form
    candidates: tuple         # (label, form as the kernel would run it: constants folded, expm1/log1p)
    display: dict             # label -> the same form with exact constants (for LaTeX)
    symbols: tuple            # argument order of the check points
    points: tuple             # check points, exact SymPy numbers (see check_points)


def _exact(v):
    return sp.nsimplify(v, rational=True) if isinstance(v, float) else sp.sympify(v)


def check_points(spec) -> tuple:
    """``(symbols, points)``: where candidates are compared, as exact SymPy numbers.

    Symbols are ``x``, then the target (losses) or the output (activations), then
    the hyperparameters at their defaults.
    """
    hyper = list(spec.hyper)
    hvals = [_exact(spec.hyper[h].default) for h in hyper]
    xs = {sp.sympify(v) for p in _X_POINTS for v in (p, -p)}
    if spec.kind == "activation":
        xs |= {_exact(k) for k in spec.kinks}
    xs = sorted(xs, key=float)
    points = []
    if spec.kind == "loss":
        symbols = (spec.x, spec.target, *hyper)
        targets = [_exact(v) for v in _TARGETS[spec.target_kind]]
        for y in targets:
            for x in xs:
                points.append((x, y, *hvals))
            for k in spec.kinks:  # a loss's kinks are residuals z − y
                points.append((y + _exact(k), y, *hvals))
    else:
        symbols = (spec.x, spec.output, *hyper)
        subs = dict(zip(hyper, hvals))
        for x in xs:
            y = spec.expr.xreplace({spec.x: x, **subs})
            points.append((x, y, *hvals))
    return symbols, points


def _branchwise(expr):
    if isinstance(expr, sp.Piecewise):
        return sp.Piecewise(*[(sp.simplify(e), c) for e, c in expr.args])
    return sp.simplify(expr)


def _output_forms(spec, derivs) -> list:
    """Forms of f′ written in the output y only (no x), if SymPy finds them."""
    y = spec.output
    out = []
    for label, d in derivs:
        for f in (spec.kernel_expr, spec.expr):
            e = d.subs(f, y)
            if spec.x not in e.free_symbols:
                out.append((f"{label} with f(x) -> y", e))
                out.append((f"simplify({label} with f(x) -> y)", sp.simplify(e)))
    try:
        sols = sp.solve(sp.Eq(y, spec.expr), spec.x)
    except (NotImplementedError, ValueError, TypeError):
        sols = []
    if len(sols) == 1:
        e = sp.simplify(derivs[-1][1].subs(spec.x, sols[0]))
        if spec.x not in e.free_symbols:
            out.append(("x -> f^-1(y)", e))
    return out


def derivation(spec) -> Derivation:
    """The derivative of an elementwise loss or activation: the raw and textbook derivatives,
    the candidate forms a kernel may run, and the points where they are compared."""
    x = spec.x
    raw = pin_heaviside(sp.diff(spec.kernel_expr, x))
    reference = pin_heaviside(sp.diff(spec.expr, x))
    cands = [("diff", raw), ("simplify", pin_heaviside(sp.simplify(raw))), ("factor", sp.factor(raw))]
    if isinstance(raw, sp.Piecewise):
        cands.append(("simplify each branch", pin_heaviside(_branchwise(raw))))
    if spec.kind == "activation":
        cands += _output_forms(spec, [("diff", raw), ("textbook diff", reference)])
    symbols, points = check_points(spec)
    display = dict(reversed(cands))  # label -> the form as SymPy wrote it (exact constants), first wins
    cands = tuple((label, use_expm1_log1p(fold_constants(e))) for label, e in cands)
    return Derivation(raw=raw, reference=reference, candidates=cands, display=display, symbols=symbols,
                      points=tuple(points))

