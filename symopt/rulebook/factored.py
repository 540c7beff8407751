"""Factored statistics inside a rule: means along one axis of a matrix, and states of a row or column.

Adafactor (Shazeer & Stern 2018) keeps, for a matrix parameter, not the full second moment
``v`` of the gradient but its row means ``R`` and column means ``C``, and estimates
``v ≈ R C / mean(R)`` (a rank-1 outer product).  A rule writes it with::

    R ← R + w (RowMean(g²) − R)           # State(0, shape="row"):  one value per row
    C ← C + w (ColMean(g²) − C)           # State(0, shape="col"):  one value per column
    v̂ = R C / max(ColMean(R), ε)          # ColMean of a row value: one number per matrix

The matrix view is torch's: a param of shape ``(…, m, n)`` (at least 2-D) is a stack of
``m × n`` matrices over its last two axes (``torch.optim.Adafactor``: ``grad.norm(dim=-1)``,
``dim=-2``).  :class:`RowMean` is the mean over the last axis (one value per row, shape
``(…, m, 1)``), :class:`ColMean` over the second-to-last (shape ``(…, 1, n)``); a ``ColMean``
of a row value (or ``RowMean`` of a column value) is one number per matrix.  A rule with
:data:`min_dim_to_factor` reads the matrices as Optax's ``_factored_dims`` does instead: rows
along the second largest axis, columns along the largest, wherever they are (the other axes batch
axes; ``runtime/matrix.py``'s ``factored_axes``), a row state the param's shape with the column
axis 1.  The tensor
reductions of :mod:`.reduction` (``TensorSum``, ``TensorMean``) remain over the whole
tensor.

Params of fewer than two dimensions are not factored (nor, in a rule with the hyperparameter
:data:`min_dim_to_factor`, params whose second largest axis is shorter than that): for them :data:`factored` is false,
``shape="row"``/``"col"`` states do not exist and ``shape="vector"`` states (the param's shape,
only for such params) do; a rule chooses between the two with ``Piecewise(..., (…, factored))``.
:data:`machine_eps` is the machine epsilon of the param's dtype (torch's ``eps1=None``).

The planner (``codegen/plan_factored.py``) turns each reduction level into one read-only
pass over the elements, the row and column states into short loops between the passes,
and the remaining updates into one final pass.
"""

from __future__ import annotations

import sympy as sp

from .reduction import Reduction

__all__ = ["RowMean", "ColMean", "factored", "machine_eps", "min_dim_to_factor", "FACTOR_SYMBOLS", "STATE_SHAPES",
           "is_factored_rule"]

#: True for a param read as a stack of matrices (at least 2-D), false for a vector or scalar.
factored = sp.Symbol("factored")
#: The machine epsilon of the param's dtype (2⁻²³ for float32, 2⁻⁵² for float64).
machine_eps = sp.Symbol("epsilon_mach", positive=True)
#: A rule that has this symbol as a hyperparameter factors a param only when its second largest axis
#: has at least that many entries (Optax's ``min_dim_size_to_factor``), over its two largest axes; the
#: others, matrices included, take the ``vector`` layout (full-shape states).  Without it every ≥2-D
#: param is factored, over its last two axes.
min_dim_to_factor = sp.Symbol("min_dim_to_factor")
FACTOR_SYMBOLS = (factored, machine_eps)
#: A state's shape: the param's (``full``), one value per row / column of each matrix of a
#: factored param (``row``: ``(…, m, 1)``, ``col``: ``(…, 1, n)``), or the param's shape for
#: params that are not factored only (``vector``).
STATE_SHAPES = ("full", "row", "col", "vector")


class RowMean(Reduction):
    """Mean of the argument along the last axis: one value per row of each matrix."""

    scope, op = "row", "mean"

    def _latex(self, printer, exp=None):
        text = rf"\operatorname{{mean}}_{{j}}\left({printer._print(self.args[0])}\right)"
        return text if exp is None else rf"\left({text}\right)^{{{exp}}}"


class ColMean(Reduction):
    """Mean of the argument along the second-to-last axis: one value per column of each matrix."""

    scope, op = "col", "mean"

    def _latex(self, printer, exp=None):
        text = rf"\operatorname{{mean}}_{{i}}\left({printer._print(self.args[0])}\right)"
        return text if exp is None else rf"\left({text}\right)^{{{exp}}}"


def is_factored_rule(rule) -> bool:
    """True when ``rule`` holds a row/column mean or a state that is not of the param's shape."""
    return (any(rhs.has(RowMean, ColMean) for _, rhs in rule.updates)
            or any(spec.shape != "full" for spec in rule.state.values()))
