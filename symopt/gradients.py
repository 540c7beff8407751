"""``symopt.gradient(expr, wrt)``: a compiled value-and-gradient of a scalar SymPy expression.

>>> import sympy as sp, numpy as np, symopt
>>> x = sp.symbols("x0:5")
>>> rosen = sp.Add(*[100 * (x[i + 1] - x[i]**2)**2 + (1 - x[i])**2 for i in range(4)])
>>> f = symopt.gradient(rosen, x)
>>> value, grad = f(np.ones(5))          # (0.0, array([0., 0., 0., 0., 0.]))
>>> f.forward_ops, f.gradient_ops        # op counts of f alone and of f with ∇f

The gradient comes from reverse-mode accumulation over the expression's DAG
(:mod:`symopt.derive.reverse`), one sweep per term shape of the top-level sum
(:func:`symopt.codegen.plan_gradients.term_program`).  The generated module (``gradient_module.py.jinja``)
is written to the user cache (``$SYMOPT_CACHE_DIR/gradients``) like user
optimizer rules and executed from its checked text with the cache file as its
file name (:func:`symopt.user_modules.load_gradient`), so numba's on-disk cache
works; it depends only on the term shapes, so e.g. every N-dimensional Rosenbrock
shares one compiled kernel.  Evaluation is float64.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from .codegen.plan_gradients import TermProgram, term_program
from .user_modules import load_gradient

__all__ = ["Gradient", "gradient"]


class Gradient:
    """A compiled ``f(x) -> (value, gradient)`` for one scalar expression.

    Attributes: ``expr``, ``wrt`` (the symbols, in the order of ``x``),
    ``forward_ops`` (operations to evaluate f), ``reverse_ops`` (extra operations
    for ∇f), ``gradient_ops`` (their sum) and ``ops_ratio`` (gradient_ops /
    forward_ops), ``module_path`` (the generated file, None if kept in memory).
    """

    def __init__(self, program: TermProgram):
        self.program = program
        self.expr = program.expr
        self.wrt = program.wrt
        self.n = len(program.wrt)
        self.module, self.module_path = load_gradient(program)
        self._args = []
        for g in program.groups:
            self._args += [np.ascontiguousarray(g.index), np.ascontiguousarray(g.consts)]
        self._offset = program.offset
        self._empty = np.empty(0, dtype=np.float64)

    @property
    def forward_ops(self) -> int:
        return self.program.forward_ops

    @property
    def reverse_ops(self) -> int:
        return self.program.reverse_ops

    @property
    def gradient_ops(self) -> int:
        return self.program.gradient_ops

    @property
    def ops_ratio(self) -> float:
        return self.program.ratio

    def __repr__(self) -> str:
        return (f"<symopt.Gradient of an expression in {self.n} symbols: {self.forward_ops} ops forward, "
                f"{self.gradient_ops} with the gradient ({self.ops_ratio:.2f}x)>")

    def _check(self, x) -> np.ndarray:
        arr = x if isinstance(x, np.ndarray) else np.asarray(x)
        if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
            raise TypeError(f"x must hold real numbers, got dtype {arr.dtype}")
        if arr.shape != (self.n,):
            raise ValueError(f"x must have shape ({self.n},), one value per symbol in wrt, got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float64)
        if not np.isfinite(arr).all():
            i = int(np.argwhere(~np.isfinite(arr))[0][0])
            raise ValueError(f"x[{i}] ({self.wrt[i]}) is {arr[i]} (NaN/inf inputs are not accepted)")
        return arr

    def __call__(self, x, out=None):
        """``(f(x), ∇f(x))``; ``out`` (optional, float64 of shape (n,)) receives the gradient."""
        arr = self._check(x)
        if out is None:
            out = np.empty(self.n, dtype=np.float64)
        elif not (isinstance(out, np.ndarray) and out.shape == (self.n,) and out.dtype == np.float64
                  and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError(f"out must be a writable C-contiguous float64 array of shape ({self.n},)")
        value = self.module.evaluate(arr, out, True, *self._args)
        return float(value) + self._offset, out

    def value(self, x) -> float:
        """``f(x)`` alone (the forward sweep)."""
        arr = self._check(x)
        return float(self.module.evaluate(arr, self._empty, False, *self._args)) + self._offset

    def latex(self, max_symbols: int = 16) -> str:
        """LaTeX of f and its gradient.

        With at most ``max_symbols`` symbols, every ∂f/∂x_i written out (the
        reverse sweep's expressions with the temporaries substituted back);
        otherwise one line per term shape, in slots ``p_j`` and constants ``c_j``.
        """
        lines = [f"f = {sp.latex(self.expr)}"]
        per_shape = []
        for g in self.program.groups:
            resolved: dict = {}
            for s, e in (*g.sweep.forward, *g.sweep.reverse):
                resolved[s] = e.xreplace(resolved)
            per_shape.append([d.xreplace(resolved) for d in g.sweep.grads])
        if self.n <= max_symbols:
            parts: dict = {s: [] for s in self.wrt}
            for g, partials in zip(self.program.groups, per_shape):
                for row, consts in zip(g.index, g.exact_consts):
                    sub = {p: self.wrt[int(i)] for p, i in zip(g.inputs, row)}
                    sub.update(dict(zip(g.params, consts)))
                    for p, i, d in zip(g.inputs, row, partials):
                        parts[self.wrt[int(i)]].append(d.xreplace(sub))
            for s in self.wrt:
                lines.append(rf"\frac{{\partial f}}{{\partial {sp.latex(s)}}} = {sp.latex(sp.Add(*parts[s]))}")
        else:
            for k, (g, partials) in enumerate(zip(self.program.groups, per_shape)):
                lines.append(rf"t_{{{k}}} = {sp.latex(g.template)} \quad ({len(g.index)} terms)")
                for p, d in zip(g.inputs, partials):
                    lines.append(rf"\frac{{\partial t_{{{k}}}}}{{\partial {sp.latex(p)}}} = {sp.latex(d)}")
        return r"\begin{aligned}" + r" \\ ".join(line.replace("=", "&=", 1) for line in lines) + r"\end{aligned}"

    def _repr_latex_(self) -> str:
        return "$$" + self.latex() + "$$"

    def _repr_html_(self):
        from .views import html

        return html(self)


def gradient(expr, wrt) -> Gradient:
    """Compiled value and gradient of the scalar SymPy expression ``expr`` with respect to ``wrt``.

    ``wrt`` is a Symbol or a sequence of distinct Symbols; every free symbol of
    ``expr`` must be among them, and each must occur in ``expr``.  Supported:
    ``+ − × ÷``, powers and every function of :data:`symopt.functions.REGISTRY`
    (:func:`symopt.functions.supported_text` lists them), with its convention at
    kinks (``sign(0) = 0``, ties of ``Max``/``Min`` share the gradient evenly).
    Raises ``TypeError``/``ValueError`` naming the problem otherwise.
    Returns a :class:`Gradient`: ``value, grad = f(x)`` with ``x`` of shape
    ``(len(wrt),)``.
    """
    return Gradient(term_program(expr, wrt))
