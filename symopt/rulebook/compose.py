"""Composition: a base rule and transforms become ONE rule, by substitution.

``compose(base, *transforms)`` builds the updates

1. gradient transforms, in order (each rebinds ``g``);
2. the base rule's updates (rule transforms such as ``nesterov`` rewrite them first);
   its param update θ ← F(...) is kept as the expression θ_new;
3. update transforms, in order, each rewriting θ_new (cautious masking and the sign
   read Δ = θ_new − θ_{t−1}, with θ's own terms expanded so Δ is exact);
4. θ_t = θ_new.

The result is an ordinary :class:`~.rule.Rule`: it has ``.latex()``, goes through
the same plan (per-step scalars hoisted, CSE), and is generated as one module
whose kernel reads and writes every array once -- after one read-only pass when a
transform needs a reduction (global norm, cautious masking's count).
"""

from __future__ import annotations

import sympy as sp

from .metadata import RuleError
from .rule import Rule
from .transforms import Transform

__all__ = ["compose"]


class _Context:
    """What transforms see while a composed rule is built."""

    def __init__(self, base: Rule):
        self.base = base
        self.param, self.grad = base.param, base.grad
        self.updates: list = []
        self.hyper: dict = dict(base.hyper)
        self.state: dict = dict(base.state)
        self.latex_names = dict(base.latex_names)
        self.names = {s.name for s in [base.param, base.grad, *base.state, *base.hyper,
                                       *(lhs for lhs, _ in base.updates)]}
        self.names.add("t")
        self.new_param = None

    def fresh(self, name: str, latex: str | None = None) -> sp.Symbol:
        cand, k = name, 2
        while cand in self.names:
            cand = f"{name}{k}"
            k += 1
        self.names.add(cand)
        if latex:
            self.latex_names[cand] = latex
        return sp.Symbol(cand)

    def fresh_state(self, name: str, latex: str, spec) -> sp.Symbol:
        sym = self.fresh(name, latex)
        taken = {self.base.state_key(s) if s in self.base.state else (v.key or s.name) for s, v in self.state.items()}
        if (spec.key or sym.name) in taken:
            raise RuleError(f"compose: state key {spec.key!r} is already used by the base rule")
        self.state[sym] = spec
        return sym

    def assign(self, name: str, expr, latex: str | None = None) -> sp.Symbol:
        sym = self.fresh(name, latex)
        self.updates.append((sym, expr))
        return sym

    def lr(self, who: str) -> sp.Symbol:
        for sym, h in self.hyper.items():
            if (h.key or sym.name) == "lr":
                return sym
        raise RuleError(f"compose: {who} needs the base rule's learning rate (a hyperparameter with key 'lr')")

    def set_new_param(self, expr) -> None:
        self.new_param = expr

    def delta(self):
        """Δ = θ_new − θ_{t−1}, with the terms that hold θ expanded so θ cancels exactly."""
        terms = [sp.expand_mul(a) if self.param in a.free_symbols else a for a in sp.Add.make_args(self.new_param)]
        return sp.Add(*terms) - self.param


def _base_rule(base) -> Rule:
    if isinstance(base, Rule):
        return base
    if isinstance(base, str):
        from .catalog import family

        return family(base).default_rule
    raise TypeError(f"compose: base must be a rule name or a symopt.Rule, got {type(base).__name__}")


def compose(base, *transforms, name: str | None = None, doc: str | None = None, references=None) -> Rule:
    """One :class:`Rule` from ``base`` (a built-in name or a Rule) and ``transforms``.

    >>> import symopt
    >>> rule = symopt.compose("adam", symopt.transforms.cautious(), symopt.transforms.clip_global_norm(1.0))
    >>> opt = symopt.optimizer(rule, params, lr=1e-3, max_norm=1.0)        # doctest: +SKIP
    """
    rule = _base_rule(base)
    for tr in transforms:
        if not isinstance(tr, Transform):
            raise TypeError(f"compose: expected symopt.transforms objects, got {type(tr).__name__}")
    ctx = _Context(rule)
    for tr in transforms:
        for sym, h in tr.hypers(ctx).items():
            key = h.key or sym.name
            clash = [s for s, o in ctx.hyper.items() if (o.key or s.name) == key]
            if clash:
                raise RuleError(f"compose: {tr!r} uses the keyword {key!r}, which {rule.name!r} already has; "
                                f"pass key=... to the transform")
            ctx.hyper[sym] = h
    base_updates = list(rule.updates)
    for tr in transforms:
        if tr.kind == "rule":
            base_updates = tr.rewrite(rule, base_updates, ctx)
    for tr in transforms:
        if tr.kind == "grad":
            tr.apply(ctx)
    posts = [tr for tr in transforms if tr.kind == "update"]
    # The base's updates; its last param update becomes θ_new (an expression, not yet assigned).
    last = max((i for i, (lhs, _) in enumerate(base_updates) if lhs == rule.param), default=None)
    reads_after = last is not None and any(rule.param in rhs.free_symbols for _, rhs in base_updates[last + 1:])
    current = rule.param
    for i, (lhs, rhs) in enumerate(base_updates):
        if current is not rule.param:
            rhs = rhs.xreplace({rule.param: current})
        if lhs != rule.param:
            ctx.updates.append((lhs, rhs))
        elif i == last and not reads_after:
            # θ_new is assigned after the base's later updates: snapshot what they overwrite.
            later = {lhs2 for lhs2, _ in base_updates[i + 1:]}
            snap = {x: ctx.assign(f"{x.name}_prev", x) for x in sorted(rhs.free_symbols & later, key=str)}
            ctx.new_param = rhs.xreplace(snap) if snap else rhs
        else:
            current = ctx.assign("theta_new", rhs, r"\theta'")
            if i == last:
                ctx.new_param = current
    if ctx.new_param is None:  # pragma: no cover - a Rule always updates its param
        raise RuleError(f"compose: {rule.name!r} never updates its param")
    for tr in posts:
        tr.apply(ctx)
    ctx.updates.append((rule.param, ctx.new_param))
    label = "+".join([rule.name, *(tr.name for tr in transforms)])
    parts = "; ".join(repr(tr) for tr in transforms)
    return Rule(name or label, param=rule.param, grad=rule.grad, updates=ctx.updates, state=ctx.state,
                hyper=ctx.hyper, latex_names=ctx.latex_names, source="composed",
                references=rule.references if references is None else references,
                doc=doc if doc is not None else f"{rule.name} composed with {parts or 'nothing'}, as one rule.")
