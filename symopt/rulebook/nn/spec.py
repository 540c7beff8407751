"""The math stage of ``symopt.nn``: losses and activations as plain SymPy data.

Two shapes of function:

* :class:`Elementwise` -- one value per element: ``ℓ(z, y)`` for a loss on a
  prediction ``z`` and target ``y`` (MSE, MAE, Huber, binary cross-entropy on
  logits, hinge), ``f(x)`` for an activation.  ``expr`` is the textbook
  definition (shown in LaTeX, and the reference the kernels are checked against);
  ``kernel_expr`` is the same function written for floating point (log-sum-exp
  branches, ``log1p``), and equals ``expr`` wherever both are finite.  The
  derivative is never written here: :mod:`symopt.derive.elementwise` derives it
  with ``sympy.diff`` (with candidate forms), and the plan stage
  (:func:`symopt.codegen.plan_gradients.plan_elementwise`) keeps the cheapest accurate one.
* :class:`Rowwise` -- one value per row of a ``(batch, classes)`` array, with
  reductions over the row (softmax and softmax cross-entropy).  Their derivation
  over an indexed sum lives in the defining module; the spec holds the stable
  reductions and outputs the kernel evaluates.

Subgradient convention at kinks (the same for every function): the step
function is pinned to ``H(0) = 0`` and ``sign(0) = 0``, so ReLU′(0) = 0,
|x|′(0) = 0, the hinge's derivative at the kink is 0 and leaky ReLU′(0) is the
negative slope (the ``x ≤ 0`` branch).  These are PyTorch's values too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import sympy as sp

from ..metadata import Hyper

__all__ = ["TARGET_KINDS", "Elementwise", "Hyper", "Rowwise"]

#: Loss target domains checked at run time.
TARGET_KINDS = {
    "real": "any finite real number",
    "probability": "a probability in [0, 1]",
    "sign": "-1 or +1",
    "labels": "an integer class label in [0, classes)",
}


def _srepr_items(d: dict) -> list:
    return [f"{sp.srepr(k)}={v!r}" for k, v in d.items()]


@dataclass
class Elementwise:
    """An elementwise loss ``ℓ(z, y)`` or activation ``f(x)`` in SymPy."""

    name: str
    kind: str                           # "loss" or "activation"
    x: sp.Symbol                        # the differentiated input (prediction z / pre-activation x)
    expr: sp.Expr                       # textbook definition
    kernel_expr: sp.Expr | None = None  # stable form the kernel evaluates (default: expr)
    target: sp.Symbol | None = None     # loss target y
    output: sp.Symbol | None = None     # activation output symbol; f′ may be written in it
    hyper: dict = field(default_factory=dict)   # Symbol -> Hyper
    target_kind: str = "real"
    convention: str = ""                # subgradient convention at kinks, if any
    doc: str = ""
    references: tuple = ()
    latex_names: dict = field(default_factory=dict)
    kinks: tuple = ()                   # x values (given y = kink_target) where the convention applies
    kink_target: float = 0.0

    def __post_init__(self):
        if self.kind not in ("loss", "activation"):
            raise ValueError(f"{self.name}: kind must be 'loss' or 'activation', got {self.kind!r}")
        if self.kind == "loss" and self.target is None:
            raise ValueError(f"loss {self.name}: a target symbol is required")
        if self.kind == "activation" and self.output is None:
            raise ValueError(f"activation {self.name}: an output symbol is required")
        if self.target_kind not in TARGET_KINDS:
            raise ValueError(f"{self.name}: unknown target kind {self.target_kind!r}")
        if self.kernel_expr is None:
            self.kernel_expr = self.expr
        allowed = {self.x, *self.hyper} | ({self.target} if self.target is not None else set())
        for label, e in (("expr", self.expr), ("kernel_expr", self.kernel_expr)):
            extra = e.free_symbols - allowed
            if extra:
                raise ValueError(f"{self.name}: {label} uses undeclared symbols {sorted(map(str, extra))}")

    def fingerprint(self) -> str:
        parts = [self.name, self.kind, sp.srepr(self.x), sp.srepr(self.expr), sp.srepr(self.kernel_expr),
                 sp.srepr(self.target) if self.target is not None else "-",
                 sp.srepr(self.output) if self.output is not None else "-",
                 *_srepr_items(self.hyper), self.target_kind, self.convention, self.doc]
        return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()

    def latex(self, e=None) -> str:
        """LaTeX of ``e`` (default: the definition) with this spec's symbol names."""
        names = {s: self.latex_names.get(s.name, sp.latex(s)) for s in (self.expr.free_symbols | set(self.hyper))}
        if self.output is not None:
            names[self.output] = self.latex_names.get(self.output.name, sp.latex(self.output))
        return sp.latex(self.expr if e is None else e, symbol_names=names)


@dataclass
class Rowwise:
    """A function of each row of a ``(batch, classes)`` array, with row reductions.

    ``forward_reductions`` are ``(symbol, "max" | "sum", element expression)``
    evaluated in order over the row; ``forward_value`` (loss: the row's loss, may
    use ``picked``, the element at the label) or ``forward_output`` (activation:
    one value per element).  ``grad_reductions``/``grad_output`` give the
    derivative: for a loss ``∂L/∂z_j``, for an activation the vector-Jacobian
    product ``Σ_k g_k ∂f_k/∂z_j`` with ``upstream`` = g and ``output`` = f(z).
    ``derived`` holds the expressions as SymPy produced them (indexed sums), for
    display and tests.
    """

    name: str
    kind: str
    element: sp.Symbol                  # z_j
    forward_reductions: tuple
    grad_reductions: tuple = ()
    forward_value: sp.Expr | None = None
    forward_output: sp.Expr | None = None
    grad_output: sp.Expr | None = None
    onehot: sp.Symbol | None = None     # y_j = [j == label] (loss)
    picked: sp.Symbol | None = None     # z at the label (loss)
    upstream: sp.Symbol | None = None   # g_j (activation backward)
    output: sp.Symbol | None = None     # f_j (activation backward)
    target_kind: str = "labels"
    textbook: str = ""                  # LaTeX of the definition
    derived: dict = field(default_factory=dict)   # label -> SymPy expression (as derived)
    doc: str = ""
    references: tuple = ()
    hyper: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        red = lambda rs: [f"{sp.srepr(s)}:{op}:{sp.srepr(e)}" for s, op, e in rs]
        opt = lambda e: sp.srepr(e) if e is not None else "-"
        parts = [self.name, self.kind, sp.srepr(self.element), *red(self.forward_reductions),
                 *red(self.grad_reductions), opt(self.forward_value), opt(self.forward_output),
                 opt(self.grad_output), opt(self.onehot), opt(self.picked), opt(self.upstream),
                 opt(self.output), self.target_kind, self.textbook, self.doc]
        return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()
