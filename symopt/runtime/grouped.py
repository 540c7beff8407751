"""Param groups with their own rules: ``{"params": [...], "rule": "adamw", "lr": 3e-4}``.

:func:`optimizer` is ``symopt.optimizer``.  Muon steps matrices; embeddings, biases and norms want AdamW (Keller Jordan's
``MuonWithAuxAdam``, Keras, Optax's ``partition``).  :func:`symopt.optimizer` returns a
:class:`GroupedOptimizer` when a group names another rule than the optimizer's: one
:class:`~symopt.runtime.optimizer.Optimizer` per rule over that rule's groups, stepped one
after another, behind one torch-style interface.  Params keep their order (state and
``state_dict`` are indexed as the groups list them); each group dict is the live dict of its
rule's optimizer and holds ``"rule"`` (the rule's name), so ``state_dict()`` keeps it.
Every gradient is checked for NaN/inf before any rule steps, so a bad gradient still
changes nothing.
"""

from __future__ import annotations

import numpy as np

from .optimizer import ON_NONFINITE, NonFiniteGradientError, Optimizer

__all__ = ["optimizer", "GroupedOptimizer", "names_other_rules"]


def optimizer(rule, params, *, on_nonfinite: str = "raise", **hyper):
    """Build an optimizer for a built-in rule name or a :class:`symopt.Rule` (see :class:`Optimizer`).

    ``params`` is a list of C-contiguous, writable float32 or float64 arrays (one
    dtype per optimizer), or a list of torch-style groups
    ``{"params": [...], "lr": ...}``.  Keyword arguments set the defaults of every
    group, with torch.optim's names (``lr``, ``betas``, ``eps``...).  A group may name
    its own rule (``{"params": [...], "rule": "adamw", "lr": 3e-4}``, Muon for matrices
    and AdamW for the rest): the keyword arguments then set the defaults of ``rule``'s
    groups only, and the result is a :class:`GroupedOptimizer`.
    """
    if names_other_rules(rule, params):
        return GroupedOptimizer(rule, params, on_nonfinite=on_nonfinite, **hyper)
    return Optimizer(rule, params, on_nonfinite=on_nonfinite, **hyper)


def _name(rule) -> str:
    return rule if isinstance(rule, str) else getattr(rule, "name", repr(rule))


def names_other_rules(rule, params) -> bool:
    """True when ``params`` is a list of group dicts and one names a rule other than ``rule``."""
    if isinstance(params, np.ndarray) or not isinstance(params, (list, tuple)):
        return False
    return any(isinstance(g, dict) and "rule" in g and _name(g["rule"]) != _name(rule) for g in params)


class GroupedOptimizer:
    """Several rules over their own param groups, as one optimizer (see the module doc).

    ``rule`` and the keyword arguments apply to the groups that name no rule; a group that
    names one takes that rule's defaults and its own values.  Attributes as
    :class:`~symopt.runtime.optimizer.Optimizer`: ``param_groups``, ``params``, ``state``,
    ``step_counts``, ``skipped_steps``, ``step(grads)``, ``state_dict()``,
    ``load_state_dict()``; ``parts`` lists the runtime optimizer of each rule.
    """

    def __init__(self, rule, params, *, on_nonfinite: str = "raise", **hyper):
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        groups = list(params)
        if not all(isinstance(g, dict) for g in groups):
            raise TypeError("params must be all param-group dicts when a group names its rule")
        by_rule: dict = {}
        for gi, g in enumerate(groups):
            r = g.get("rule", rule)
            by_rule.setdefault(_name(r), (r, []))[1].append(gi)
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        self.parts = []
        order = []      # (group index, part, group index within the part)
        for name, (r, indices) in by_rule.items():
            kwargs = hyper if name == _name(rule) else {}
            sub = [{**{k: v for k, v in groups[gi].items() if k != "rule"}} for gi in indices]
            opt = Optimizer(r, sub, on_nonfinite="ignore", **kwargs)
            for k, group in enumerate(opt.param_groups):
                group["rule"] = opt.rule_name
                order.append((indices[k], len(self.parts), k))
            self.parts.append(opt)
        order.sort()
        self.param_groups = [self.parts[p].param_groups[k] for _, p, k in order]
        # Global param j (groups in the user's order) -> (part, index within the part).
        self._where = []
        for _, p, k in order:
            first = sum(len(g["params"]) for g in self.parts[p].param_groups[:k])
            self._where += [(p, first + i) for i in range(len(self.parts[p].param_groups[k]["params"]))]
        self._local = [[j for j, (p, _) in enumerate(self._where) if p == q] for q in range(len(self.parts))]
        dtypes = {opt.dtype for opt in self.parts}
        if len(dtypes) != 1:
            raise TypeError(f"all params must share one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop()
        self.rule_name = "+".join(opt.rule_name for opt in self.parts)
        self.defaults = {opt.rule_name: opt.defaults for opt in self.parts}

    @property
    def params(self) -> list:
        return [self.parts[p].params[i] for p, i in self._where]

    @property
    def step_counts(self) -> np.ndarray:
        return np.array([self.parts[p].step_counts[i] for p, i in self._where], dtype=np.int64)

    @property
    def state(self) -> dict:
        """Per-param live state views, indexed as the groups list the params."""
        states = [opt.state for opt in self.parts]
        return {j: states[p][i] for j, (p, i) in enumerate(self._where)}

    def step(self, grads) -> None:
        """One step of every rule over its params (``grads`` in the order of :attr:`params`)."""
        if type(grads) not in (list, tuple):
            raise TypeError(f"grads must be a list of arrays, one per param, got {type(grads).__name__}")
        if len(grads) != len(self._where):
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(self._where)} params")
        if self.on_nonfinite != "ignore":
            nbad = sum(int(np.count_nonzero(~np.isfinite(g))) for g in grads if isinstance(g, np.ndarray))
            if nbad:
                if self.on_nonfinite == "skip":
                    self.skipped_steps += 1
                    return None
                raise NonFiniteGradientError(f"{nbad} gradient value(s) are NaN or inf; no param or state was "
                                             f"modified")
        split = [[grads[j] for j in local] for local in self._local]
        for opt, part in zip(self.parts, split):
            opt._check_grads(part)  # every part's gradients are checked before any part steps
        for opt, part in zip(self.parts, split):
            opt.step(part)
        return None

    def state_dict(self) -> dict:
        """A torch-style dict over every param (global indices); each group keeps its ``"rule"``."""
        state, groups = {}, []
        dicts = [opt.state_dict() for opt in self.parts]
        for j, (p, i) in enumerate(self._where):
            state[j] = dicts[p]["state"][i]
        start = 0
        for g in self.param_groups:
            n = len(g["params"])
            groups.append({**{k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items() if k != "params"},
                           "params": list(range(start, start + n))})
            start += n
        return {"state": state, "param_groups": groups, "symopt": {"parts": [d["symopt"] for d in dicts]}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a dict from :meth:`state_dict` (every part is checked before any changes)."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, the optimizer has {len(self.param_groups)}")
        for gi, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if saved.get("rule") != mine["rule"]:
                raise ValueError(f"state_dict param group {gi} is for rule {saved.get('rule')!r}, not {mine['rule']!r}")
        parts = [{"state": {}, "param_groups": []} for _ in self.parts]
        for gi, saved in enumerate(groups):
            p = next(q for q, opt in enumerate(self.parts) if any(g is self.param_groups[gi] for g in opt.param_groups))
            parts[p]["param_groups"].append(saved)
        local_index = {j: i for j, (_, i) in enumerate(self._where)}
        for pid, entry in state_dict["state"].items():
            if pid not in local_index:
                raise ValueError(f"state_dict has state for param {pid!r}, which no param group lists")
            parts[self._where[pid][0]]["state"][pid] = entry
        # Renumber each part's params as its own optimizer counts them.
        for p, sd in enumerate(parts):
            renum = {}
            for g in sd["param_groups"]:
                ids = list(g.get("params", []))
                renum.update({pid: local_index.get(pid, pid) for pid in ids})
                g["params"] = [renum[pid] for pid in ids]
            sd["state"] = {renum[pid]: e for pid, e in sd["state"].items()}
        snapshots = [opt.state_dict() for opt in self.parts]
        try:
            for opt, sd in zip(self.parts, parts):
                opt.load_state_dict(sd)
        except BaseException:
            for opt, snap in zip(self.parts, snapshots):
                opt.load_state_dict(snap)
            raise

    def __repr__(self) -> str:
        return (f"<symopt.GroupedOptimizer {self.rule_name!r}: {len(self._where)} params, "
                f"{len(self.param_groups)} group(s), {self.dtype}>")
