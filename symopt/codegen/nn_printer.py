"""Printer for the ``symopt.nn`` and ``symopt.gradient`` kernels.

:class:`NNPrinter` is the optimizer :class:`~symopt.codegen.printer.KernelPrinter`
plus the functions the losses and activations use: ``log1p`` and ``expm1``
(``sympy.codegen.cfunctions``), printed as NumPy calls so a float32 kernel stays
in float32.  :func:`float64_function` compiles one printed expression into a
plain Python function (NumPy scalars, no numba): the derivation stage uses it to
check, point by point, the exact text a kernel will run.
"""

from __future__ import annotations

import math

import numpy as np

from .printer import KernelPrinter


class NNPrinter(KernelPrinter):
    """Kernel printer with ``log1p``/``expm1``."""

    def _print_log1p(self, expr):
        return f"np.log1p({self._print(expr.args[0])})"

    def _print_expm1(self, expr):
        return f"np.expm1({self._print(expr.args[0])})"


def float64_function(expr, args):
    """A Python function of ``args`` (SymPy symbols) evaluating ``expr`` as the f64 kernel would.

    The source text comes from :class:`NNPrinter` with generated argument names
    ``a0, a1, ...`` only, so no user text is executed.
    """
    names = {s: f"a{i}" for i, s in enumerate(args)}
    body = NNPrinter(names, "float64").doprint(expr)
    src = f"def _f({', '.join(names.values())}):\n    return {body}\n"
    scope = {"np": np, "math": math}
    exec(compile(src, "<symopt float64 check>", "exec"), scope)  # noqa: S102 - printer output only
    return scope["_f"]
