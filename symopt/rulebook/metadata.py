"""The plain metadata of a rule: the step symbol :data:`t`, :class:`Hyper` (a
hyperparameter's default, range, keyword and docs), :class:`State` (a state variable's
initial value and name), and :class:`RuleError`, raised for anything malformed.

:mod:`.rule` builds rules and families from them; :mod:`.validate` checks them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

__all__ = ["t", "Hyper", "State", "RuleError", "NONE_VALUE"]

#: The 1-based step counter.  Use it in per-step scalars (bias corrections, schedules).
t = sp.Symbol("t", positive=True, integer=True)


class RuleError(ValueError):
    """A rule is malformed; the message names the offending part."""


@dataclass(frozen=True)
class Hyper:
    """A hyperparameter's metadata.

    ``default`` is its value when the user does not pass one.  ``low``/``high``
    bound it (``low_open``/``high_open`` make the bound strict).  ``key`` is the
    keyword argument that carries it (default: the symbol's name); ``index``
    selects a position when the keyword takes a tuple, as torch's
    ``betas=(beta1, beta2)`` does.  ``kind`` is ``"float"``, ``"bool"`` or ``"choice"``: one
    of ``choices`` (``None`` or strings, as torch's ``adjust_lr_fn``), whose *position* is
    the symbol's value in the rule (``default`` is that position; conditions read
    ``Eq(sym, k)``) while users pass and see the choice itself.  ``"optional"`` is a number
    or ``None`` (torch's ``eps=(None, 1e-3)``): the rule sees ``None`` as :data:`NONE_VALUE`
    (below ``low``, which must be at least 0, so a rule tells it apart: ``Piecewise((…, x < 0), …)``);
    ``default`` is the rule's value (:data:`NONE_VALUE` for a default of ``None``).
    """

    default: float | bool
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    key: str | None = None
    index: int | None = None
    doc: str = ""
    kind: str = "float"
    choices: tuple = ()

    def __post_init__(self):
        if self.kind not in ("float", "bool", "choice", "optional"):
            raise RuleError(f"Hyper.kind must be 'float', 'bool', 'choice' or 'optional', got {self.kind!r}")
        if self.kind == "optional" and not (self.low >= 0 and (self.default == NONE_VALUE or self.default >= self.low)):
            raise RuleError(f"an optional hyperparameter needs low >= 0 and a default of NONE_VALUE (None) or in "
                            f"range, got low={self.low!r}, default={self.default!r}")
        if self.kind == "choice":
            if not isinstance(self.choices, tuple) or len(self.choices) < 2 or \
                    not all(c is None or isinstance(c, str) for c in self.choices) or \
                    len(set(self.choices)) != len(self.choices):
                raise RuleError(f"a choice hyperparameter needs a tuple of at least two distinct choices (None or "
                                f"strings), got {self.choices!r}")
            if type(self.default) is not int or not 0 <= self.default < len(self.choices):
                raise RuleError(f"a choice hyperparameter's default is the position of its choice, got "
                                f"{self.default!r}")
            return
        if self.choices:
            raise RuleError("only a choice hyperparameter has choices")
        if self.kind == "bool" and not isinstance(self.default, bool):
            raise RuleError(f"a bool hyperparameter needs a bool default, got {self.default!r}")
        if self.kind in ("float", "optional"):
            if isinstance(self.default, bool) or not isinstance(self.default, (int, float)):
                raise RuleError(f"hyperparameter default must be a number, got {self.default!r}")
            if not math.isfinite(self.default):
                raise RuleError(f"hyperparameter default must be finite, got {self.default!r}")

    @property
    def user_default(self):
        """The default as users pass it (the choice itself for a choice hyperparameter)."""
        if self.kind == "optional" and self.default == NONE_VALUE:
            return None
        return self.choices[self.default] if self.kind == "choice" else self.default

    def position(self, value) -> int:
        """The position of ``value`` among ``choices`` (ValueError when it is not one)."""
        for k, c in enumerate(self.choices):
            if c is value or (isinstance(value, str) and c == value):
                return k
        raise ValueError(f"must be one of {', '.join(map(repr, self.choices))}, got {value!r}")

    def range_text(self) -> str:
        if self.kind == "bool":
            return "{False, True}"
        if self.kind == "choice":
            return "{" + ", ".join(map(repr, self.choices)) + "}"
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        fmt = lambda x: "inf" if x == math.inf else ("-inf" if x == -math.inf else repr(x))
        return f"{lo}{fmt(self.low)}, {fmt(self.high)}{hi}"


#: The value a rule sees for an ``optional`` hyperparameter set to ``None``.
NONE_VALUE = -1.0


@dataclass(frozen=True)
class State:
    """A state variable's metadata: its initial value and public name.

    ``init`` is a number, an expression in hyperparameters, or the parameter
    symbol itself (the state starts as a copy of the parameter).  ``key`` is the
    name used in ``state_dict()`` (torch's names: ``exp_avg``, ``exp_avg_sq``...).
    ``shape`` is ``"full"`` (the param's shape) or, in a factored rule
    (:mod:`.factored`), ``"row"``/``"col"`` (one value per row/column of each matrix of a
    param of at least two dimensions) or ``"vector"`` (the param's shape, for params of fewer).
    """

    init: object = 0
    key: str | None = None
    doc: str = ""
    shape: str = "full"

    def __post_init__(self):
        if self.shape not in ("full", "row", "col", "vector"):
            raise RuleError(f"State.shape must be 'full', 'row', 'col' or 'vector', got {self.shape!r}")
