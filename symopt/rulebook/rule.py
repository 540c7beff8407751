"""The math stage: an optimizer update rule as plain SymPy data.

A :class:`Rule` holds the parameter and gradient symbols, the state variables with
their initial values, the hyperparameters (default, valid range, docs) and the
ordered update equations.  Updates apply in order, so a later equation sees the
results of earlier ones; assigning to a symbol that is neither the parameter nor a
state variable defines a per-element temporary (assigning to the gradient symbol
rebinds it locally -- the caller's gradient array is never written).

The step counter :data:`~symopt.rulebook.metadata.t` is 1 for the first update.
Every sub-expression that depends only on ``t`` and hyperparameters is a *per-step
scalar*: the code generator hoists it out of the element loop and computes it once
per step in float64.

A :class:`Family` is what ``symopt.optimizer(name, ...)`` looks up: one public name
with its keyword arguments, and one or more variant rules chosen by structural
options (``amsgrad=True`` adds a state buffer, so it is a different kernel).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import sympy as sp

from .metadata import Hyper, RuleError, State
from .validate import SYMBOL_TYPES, check_expression, check_hyper, check_hyper_keys, check_name, check_rule, check_text

__all__ = ["Rule", "Family", "check_family"]

def _condition(when, family_name) -> sp.Basic:
    """A variant condition: a SymPy boolean, or True/False.  Strings are refused, never parsed
    (``sympify`` would ``eval`` them)."""
    if isinstance(when, sp.Basic):
        return when
    if isinstance(when, bool):
        return sp.true if when else sp.false
    raise RuleError(f"family {family_name!r}: a variant condition must be a SymPy boolean or True/False, "
                    f"got {type(when).__name__} {when!r}")


def _as_symbol(x, what: str) -> sp.Symbol:
    if not isinstance(x, sp.Symbol):
        raise RuleError(f"{what} must be a sympy Symbol, got {type(x).__name__}: {x!r}")
    return x


class Rule:
    """An elementwise optimizer update rule written in SymPy.

    >>> import sympy as sp, symopt
    >>> p, g, m = sp.symbols("p g m"); lr, beta = sp.symbols("lr beta")
    >>> rule = symopt.Rule("heavy_ball", param=p, grad=g, state={m: 0},
    ...                    hyper={lr: 1e-2, beta: 0.9},
    ...                    updates=[(m, beta * m + g), (p, p - lr * m)])
    """

    def __init__(self, name: str, *, param, grad, updates, state=None, hyper=None,
                 doc: str = "", source: str = "user", references: Sequence[str] = (),
                 latex_names: Mapping | None = None):
        if not isinstance(name, str) or not name.strip():
            raise RuleError(f"rule name must be a non-empty string, got {name!r}")
        self.name = name
        self.param = _as_symbol(param, "param")
        self.grad = _as_symbol(grad, "grad")
        if self.param == self.grad:
            raise RuleError("param and grad must be different symbols")
        self.doc = str(doc)
        self.source = str(source)
        self.references = tuple(str(r) for r in references)

        self.state: dict[sp.Symbol, State] = {}
        for sym, spec in dict(state or {}).items():
            sym = _as_symbol(sym, "state variable")
            if spec is None:
                raise RuleError(f"state variable {sym} has no initial value")
            self.state[sym] = spec if isinstance(spec, State) else State(init=spec)

        self.hyper: dict[sp.Symbol, Hyper] = {}
        for sym, spec in dict(hyper or {}).items():
            sym = _as_symbol(sym, "hyperparameter")
            if isinstance(spec, bool):
                spec = Hyper(spec, kind="bool")
            elif not isinstance(spec, Hyper):
                if not isinstance(spec, (int, float)):
                    raise RuleError(f"hyperparameter {sym}: default must be a number or Hyper, got {spec!r}")
                spec = Hyper(float(spec))
            self.hyper[sym] = spec

        try:
            pairs = [(lhs, rhs) for lhs, rhs in updates]
        except (TypeError, ValueError):
            raise RuleError("updates must be a sequence of (symbol, expression) pairs") from None
        self.updates: list[tuple[sp.Symbol, sp.Expr]] = []
        for lhs, rhs in pairs:
            lhs = _as_symbol(lhs, "the left-hand side of an update")
            if isinstance(rhs, (int, float)) and not isinstance(rhs, bool):
                rhs = sp.Float(rhs) if isinstance(rhs, float) else sp.Integer(rhs)
            if not isinstance(rhs, sp.Expr):
                raise RuleError(f"update of {lhs}: right-hand side must be a sympy expression, got {rhs!r}")
            self.updates.append((lhs, rhs))
        self.latex_names = {k: str(v) for k, v in dict(latex_names or {}).items()}
        check_rule(self)

    # -- structure -----------------------------------------------------------
    @property
    def array_symbols(self) -> tuple[sp.Symbol, ...]:
        """Symbols that hold one value per element: param, grad and state."""
        return (self.param, self.grad, *self.state)

    @property
    def temporaries(self) -> tuple[sp.Symbol, ...]:
        seen = []
        fixed = set(self.array_symbols)
        for lhs, _ in self.updates:
            if lhs not in fixed and lhs not in seen:
                seen.append(lhs)
        return tuple(seen)

    def state_key(self, sym: sp.Symbol) -> str:
        return self.state[sym].key or sym.name

    def hyper_key(self, sym: sp.Symbol) -> str:
        return self.hyper[sym].key or sym.name

    def defaults(self) -> dict[str, object]:
        """Keyword defaults as the user passes them (tuples for indexed keys)."""
        out: dict[str, object] = {}
        tuples: dict[str, dict[int, object]] = {}
        for sym, h in self.hyper.items():
            key = h.key or sym.name
            if h.index is None:
                out[key] = h.user_default
            else:
                tuples.setdefault(key, {})[h.index] = h.user_default
                out[key] = None
        for key, d in tuples.items():
            out[key] = tuple(d[i] for i in sorted(d))
        return out

    def fingerprint(self) -> str:
        """A hash of everything that determines the generated kernel."""
        parts = [
            "name", self.name, "param", sp.srepr(self.param), "grad", sp.srepr(self.grad),
            "state", *[f"{sp.srepr(k)}={sp.srepr(sp.sympify(v.init))}|{v.key}" + ("" if v.shape == "full" else f"|{v.shape}")
                       for k, v in self.state.items()],
            "hyper", *[f"{sp.srepr(k)}={v!r}" for k, v in self.hyper.items()],
            "updates", *[f"{sp.srepr(k)}:={sp.srepr(v)}" for k, v in self.updates],
        ]
        return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()

    # -- display -------------------------------------------------------------
    def latex(self) -> str:
        """The update equations in LaTeX, with time subscripts (``m_t = β m_{t-1} + ...``)."""
        from .display import rule_latex

        return rule_latex(self)

    def _repr_latex_(self) -> str:
        return "$$" + self.latex() + "$$"

    def _repr_html_(self):
        from ..views import html

        return html(self)

    def __repr__(self) -> str:
        return f"<symopt.Rule {self.name!r}: {len(self.state)} state, {len(self.hyper)} hyperparameters>"


@dataclass
class Family:
    """One public optimizer name: its keyword arguments and its variant rules.

    ``variants`` is a list of ``(when, rule)``: ``when`` is a SymPy boolean over
    hyperparameter/option symbols (``sp.true`` for the default), tested in order.
    ``options`` are hyperparameters that only select a variant (``amsgrad``).
    ``constraints`` are ``(condition, message)`` pairs checked on every value set.
    ``refused`` maps keywords of the family's peer that it does not take to how to get the same
    (the error a user who passes one reads).
    """

    name: str
    variants: list
    options: dict = field(default_factory=dict)
    constraints: list = field(default_factory=list)
    doc: str = ""
    source: str = "user"
    references: tuple = ()
    group: str = "user"
    refused: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.variants:
            raise RuleError(f"family {self.name!r} has no variant")
        self.variants = [(_condition(w, self.name), r) for w, r in self.variants]
        self.options = {_as_symbol(k, "option"): (v if isinstance(v, Hyper) else Hyper(v, kind="bool"))
                        for k, v in self.options.items()}
        keys = {}
        for _, rule in self.variants:
            for sym, h in rule.hyper.items():
                prev = keys.get(sym)
                if prev is not None and prev != h:
                    raise RuleError(f"family {self.name!r}: hyperparameter {sym} differs between variants")
                keys[sym] = h
        for sym, h in self.options.items():
            if sym in keys:
                raise RuleError(f"family {self.name!r}: option {sym} is also a hyperparameter")
            keys[sym] = h
        self.hyper = keys
        allowed = set(keys)
        for when, _ in self.variants:
            extra = when.free_symbols - allowed
            if extra:
                raise RuleError(f"family {self.name!r}: variant condition uses unknown symbols {sorted(map(str, extra))}")

    @classmethod
    def of(cls, rule: Rule) -> "Family":
        return cls(rule.name, [(sp.true, rule)], doc=rule.doc, source=rule.source,
                   references=rule.references, group="user" if rule.source == "user" else rule.source)

    @property
    def default_rule(self) -> Rule:
        return self.select(self.defaults_by_symbol())

    def defaults_by_symbol(self) -> dict:
        return {s: h.default for s, h in self.hyper.items()}

    def select(self, values: Mapping) -> Rule:
        """The variant rule for hyperparameter values keyed by symbol."""
        # Bools become 1/0, as in the generated select_variant (``sp.Eq(flag, 1)`` holds for True).
        subs = {s: (sp.Integer(int(v)) if isinstance(v, bool) else sp.Float(v)) for s, v in values.items()}
        for when, rule in self.variants:
            if bool(when.xreplace(subs)):
                return rule
        raise RuleError(f"family {self.name!r}: no variant matches {values}")

    def rule_for(self, **kwargs) -> Rule:
        """The variant selected by keyword arguments (torch names: ``amsgrad=True``)."""
        values = self.defaults_by_symbol()
        by_key: dict[str, list] = {}
        for sym, h in self.hyper.items():
            by_key.setdefault(h.key or sym.name, []).append((sym, h))
        for key, val in kwargs.items():
            if key not in by_key:
                raise TypeError(f"{self.name}: unknown keyword argument {key!r}; known: {sorted(by_key)}")
            for sym, h in by_key[key]:
                values[sym] = val[h.index] if h.index is not None else h.position(val) if h.kind == "choice" else val
        return self.select(values)

    def _repr_html_(self):
        from ..views import html

        return html(self)

    def fingerprint(self) -> str:
        parts = [self.name]
        for when, rule in self.variants:
            parts += [sp.srepr(when), rule.fingerprint()]
        parts += [f"{sp.srepr(k)}={v!r}" for k, v in self.options.items()]
        parts += [f"{sp.srepr(c)}|{m}" for c, m in self.constraints]
        parts += [f"refused {k}|{m}" for k, m in self.refused.items()]
        return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def check_family(family) -> None:
    """Check a whole family before generating its module: every variant rule again (rules are
    mutable objects), variant conditions and constraints over hyperparameters only, metadata."""
    if not isinstance(family, Family):
        raise RuleError(f"expected a symopt.Family, got {type(family).__name__}")
    check_name(family.name, "family name", allow_none=False)
    for attr in ("doc", "source", "group"):
        check_text(getattr(family, attr), f"family {family.name!r}: {attr}")
    for key, message in family.refused.items():
        check_name(key, f"family {family.name!r}: refused keyword", allow_none=False)
        check_text(message, f"family {family.name!r}: refused keyword {key}")
    for k, ref in enumerate(family.references):
        check_text(ref, f"family {family.name!r}: reference {k}")
    if not family.variants:
        raise RuleError(f"family {family.name!r} has no variant")
    allowed = set(family.hyper)
    where = f"family {family.name!r}: "
    for sym, h in family.hyper.items():
        if type(sym) not in SYMBOL_TYPES:
            raise RuleError(f"{where}{sym!r} is a {type(sym).__name__}; only plain sympy Symbols are allowed")
        check_hyper(sym, h, where)
    check_hyper_keys(family.hyper, where)
    for sym, h in family.options.items():
        if h.kind != "bool":
            raise RuleError(f"{where}option {sym} must be a bool Hyper")
    for k, (when, rule) in enumerate(family.variants):
        if not isinstance(rule, Rule):
            raise RuleError(f"{where}variant {k} is a {type(rule).__name__}, not a symopt.Rule")
        check_rule(rule)
        check_expression(when, f"{where}condition of variant {rule.name!r}")
        extra = when.free_symbols - allowed
        if extra:
            raise RuleError(f"{where}condition of variant {rule.name!r} uses {sorted(map(str, extra))}, which are "
                            f"not hyperparameters or options")
    for k, item in enumerate(family.constraints):
        try:
            cond, message = item
        except (TypeError, ValueError):
            raise RuleError(f"{where}constraint {k} must be a (condition, message) pair") from None
        check_expression(cond, f"{where}constraint {k}")
        check_text(message, f"{where}constraint {k}: message")
        extra = cond.free_symbols - allowed
        if extra:
            raise RuleError(f"{where}constraint {k} ({message!r}) uses {sorted(map(str, extra))}, which are "
                            f"not hyperparameters or options (constraints are checked once per value set)")
