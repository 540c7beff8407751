"""Reductions inside a rule: sums and means over a tensor or over every tensor.

Most update rules are elementwise.  A few read a number computed from *all*
elements first: the global gradient norm of clipping, the per-tensor norms of
LAMB's and LARS's trust ratios, the fraction of agreeing signs of cautious
masking, the RMS of Adafactor's update.  A rule writes them as SymPy functions
of an elementwise expression::

    TensorSum(g**2)        # Σ over the elements of this tensor
    TensorMean(u**2)       # the same divided by the tensor's number of elements
    GlobalSum(g**2)        # Σ over every element of every tensor of the step
    GlobalMean(g**2)

The argument may use the param, the gradient, state values, temporaries assigned
earlier, hyperparameters and ``t`` -- it is evaluated with the values the
elementwise pass would see at that point of the update.  Reductions may nest
(the argument of one may contain another): each nesting level is one more
read-only pass.

The code generator turns every reduction into a read-only pass over the arrays
(``<prefix>_reduce_<dtype>``, float64 accumulation) whose results become
per-tensor scalars of the one elementwise pass.  Rules without reductions are
generated exactly as before.

Helpers: :func:`tensor_norm`, :func:`global_norm`, :func:`tensor_rms`.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["Reduction", "TensorSum", "TensorMean", "GlobalSum", "GlobalMean",
           "tensor_norm", "global_norm", "tensor_rms", "has_reductions", "reductions_in"]


class Reduction(sp.Function):
    """Base class: a sum or mean of an elementwise expression (one argument)."""

    nargs = 1
    is_real = True
    #: ``"tensor"`` (over one tensor) or ``"global"`` (over every tensor of the step).
    scope = "tensor"
    #: ``"sum"`` or ``"mean"``.
    op = "sum"

    def _latex(self, printer, exp=None):
        # Σ_𝒯 over the tensor, Σ_𝒫 over every tensor (all params).
        where = r"\mathcal{T}" if self.scope == "tensor" else r"\mathcal{P}"
        body = printer._print(self.args[0])
        op = r"\sum" if self.op == "sum" else r"\operatorname{mean}"
        text = rf"{op}_{{{where}}}\left({body}\right)"
        return text if exp is None else rf"\left({text}\right)^{{{exp}}}"

    def _sympystr(self, printer):
        return f"{type(self).__name__}({printer._print(self.args[0])})"


class TensorSum(Reduction):
    """Σ of the argument over the elements of the tensor being updated."""

    scope, op = "tensor", "sum"


class TensorMean(Reduction):
    """Mean of the argument over the elements of the tensor being updated."""

    scope, op = "tensor", "mean"


class GlobalSum(Reduction):
    """Σ of the argument over every element of every tensor stepped together."""

    scope, op = "global", "sum"


class GlobalMean(Reduction):
    """Mean of the argument over every element of every tensor stepped together."""

    scope, op = "global", "mean"


def tensor_norm(x) -> sp.Expr:
    """‖x‖₂ over the tensor: √(Σ x²)."""
    return sp.sqrt(TensorSum(x**2))


def global_norm(x) -> sp.Expr:
    """‖x‖₂ over every tensor: √(Σ_all x²)."""
    return sp.sqrt(GlobalSum(x**2))


def tensor_rms(x) -> sp.Expr:
    """RMS over the tensor: √(mean x²)."""
    return sp.sqrt(TensorMean(x**2))


def reductions_in(expr) -> set:
    """Every reduction node in ``expr`` (nested ones included)."""
    return set(expr.atoms(Reduction)) if isinstance(expr, sp.Basic) else set()


def has_reductions(rule) -> bool:
    """True when any update of ``rule`` contains a reduction."""
    return any(rhs.has(Reduction) for _, rhs in rule.updates)
