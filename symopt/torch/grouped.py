"""Param groups with their own rules in ``symopt.torch.Optimizer`` (Keller Jordan's ``MuonWithAuxAdam`` shape)::

    opt = symopt.torch.Optimizer("muon", [{"params": matrices},
                                          {"params": rest, "rule": "adamw", "lr": 3e-4}], lr=0.02)

:class:`GroupedOptimizer` is what :class:`symopt.torch.Optimizer` builds when a group names a rule other than
the optimizer's: one ``symopt.torch.Optimizer`` per rule (a *part*) over that rule's groups, each on the
backend ``backend=`` picks for its params (``"auto"`` chooses per part), stepped one after another behind one
``torch.optim.Optimizer``:

* ``param_groups`` are the parts' live group dicts in the user's order, each holding ``"rule"``, so an
  ``LRScheduler`` (or any code) that sets ``param_groups[i]["lr"]`` changes that group's next step;
* the rule's keywords (``lr=0.02``...) set the defaults of the groups that name no rule; a group naming a
  rule starts from that rule's defaults; the backend keywords (``compile``, ``state_dtype``,
  ``stochastic_rounding``) apply to every part;
* ``on_nonfinite`` (``"raise"``, ``"skip"``, ``"ignore"``): every gradient is checked for NaN/inf before any
  part steps, so a bad gradient in one group changes nothing in any group;
* ``state_dict()`` is torch.optim's format over all params, numbered as the groups list them, each group
  keeping its ``"rule"``; ``load_state_dict`` refuses a checkpoint whose group rules differ and checks every
  part before any changes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ..runtime.optimizer import ON_NONFINITE, NonFiniteGradientError

__all__ = ["GroupedOptimizer"]


def _name(rule) -> str:
    return rule if isinstance(rule, str) else getattr(rule, "name", repr(rule))


class GroupedOptimizer(torch.optim.Optimizer):
    """Several symopt rules over their own param groups, as one torch optimizer (see the module docstring).

    Built by ``symopt.torch.Optimizer`` (``part``: that class, which builds each rule's optimizer;
    ``options``: the backend keywords every part takes).  ``parts`` lists the optimizer of each rule
    (in the order the rules first appear); ``rule_name`` is their names joined by ``+`` (``"muon+adamw"``).
    """

    def __init__(self, part, rule, params, *, backend: str = "auto", on_nonfinite: str = "raise",
                 options: dict | None = None, **hyper):
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        groups = list(params)
        if not all(isinstance(g, dict) and "params" in g for g in groups):
            raise TypeError("params must be all param-group dicts ({'params': [...], ...}) when a group names "
                            "its rule")
        self._default_rule = rule
        self._backend = backend
        self._part = part
        self._options = dict(options or {})
        self._hyper = hyper
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        self.parts: list = []
        self._order: list = []          # per group of param_groups: (part index, group index within the part)
        by_rule: dict = {}
        for gi, g in enumerate(groups):
            r = g.get("rule", rule)
            by_rule.setdefault(_name(r), (r, []))[1].append(gi)
        placed = {}
        for r, indices in by_rule.values():
            part = self._new_part(r, [groups[gi] for gi in indices])
            for k, gi in enumerate(indices):
                placed[gi] = (len(self.parts), k)
            self.parts.append(part)
        self._order = [placed[gi] for gi in range(len(groups))]
        # torch.optim.Optimizer's bookkeeping (its __init__ would add the groups itself)
        self.defaults = {part.rule_name: part.defaults for part in self.parts}
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True
        self._refresh()

    def _new_part(self, rule, groups: list):
        """The optimizer of ``rule`` over ``groups`` (without their ``"rule"`` key); it checks nothing of the
        gradients (this class does, for all parts at once)."""
        kwargs = self._hyper if _name(rule) == _name(self._default_rule) else {}
        sub = [{k: v for k, v in g.items() if k != "rule"} for g in groups]
        return self._part(rule, sub, backend=self._backend, on_nonfinite="ignore", **self._options, **kwargs)

    def _refresh(self) -> None:
        """``param_groups``: the parts' live group dicts, in the user's order, each naming its rule."""
        self.param_groups = [self.parts[p].param_groups[k] for p, k in self._order]
        for p, k in self._order:
            self.parts[p].param_groups[k]["rule"] = self.parts[p].rule_name

    @property
    def rule_name(self) -> str:
        return "+".join(part.rule_name for part in self.parts)

    @property
    def state(self) -> dict:
        """Every param's state (the parts' ``state``), keyed by param."""
        return {p: s for part in self.parts for p, s in part.state.items()}

    def add_param_group(self, param_group: dict) -> None:
        """A new group, stepped by the optimizer of its ``"rule"`` (the default rule if it names none)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        rule = param_group.get("rule", self._default_rule)
        index = next((i for i, part in enumerate(self.parts) if part.rule_name == _name(rule)), None)
        if index is None:
            self.parts.append(self._new_part(rule, [param_group]))
            self.defaults[self.parts[-1].rule_name] = self.parts[-1].defaults
            self._order.append((len(self.parts) - 1, 0))
        else:
            self.parts[index].add_param_group({k: v for k, v in param_group.items() if k != "rule"})
            self._order.append((index, len(self.parts[index].param_groups) - 1))
        self._refresh()

    @torch.no_grad()
    def step(self, closure=None):
        """One step of every part; every gradient is checked first (``on_nonfinite``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.on_nonfinite != "ignore":
            flags: dict = {}
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        flags.setdefault(p.grad.device, []).append(torch.isfinite(p.grad).all())
            if not all(bool(torch.stack(f).all()) for f in flags.values()):
                if self.on_nonfinite == "skip":
                    self.skipped_steps += 1
                    return loss
                nbad = sum(int((~torch.isfinite(p.grad)).sum()) for g in self.param_groups for p in g["params"]
                           if p.grad is not None)
                raise NonFiniteGradientError(f"{nbad} gradient value(s) are NaN or inf; no param or state was "
                                             f"modified (on_nonfinite='skip' skips such steps, 'ignore' does not "
                                             f"check)")
        for part in self.parts:
            part.step()
        return loss

    # ---------------------------------------------------------- checkpoints
    def _local_indices(self) -> list:
        """Per param (numbered as the groups list them): (part, its index in that part's ``state_dict``)."""
        starts = [[0] for _ in self.parts]
        for p, part in enumerate(self.parts):
            for g in part.param_groups:
                starts[p].append(starts[p][-1] + len(g["params"]))
        out = []
        for p, k in self._order:
            out += [(p, starts[p][k] + i) for i in range(len(self.parts[p].param_groups[k]["params"]))]
        return out

    def state_dict(self) -> dict:
        """torch.optim's format over every param; each group keeps its ``"rule"``; ``"symopt"`` holds the
        parts' metadata."""
        dicts = [part.state_dict() for part in self.parts]
        state, groups, j = {}, [], 0
        where = self._local_indices()
        for p, k in self._order:
            saved = dicts[p]["param_groups"][k]
            n = len(saved["params"])
            groups.append({**{key: v for key, v in saved.items() if key != "params"},
                           "rule": self.parts[p].rule_name, "params": list(range(j, j + n))})
            j += n
        for j, (p, i) in enumerate(where):
            if i in dicts[p]["state"]:
                state[j] = dicts[p]["state"][i]
        meta = {"rule": self.rule_name, "parts": [d.get("symopt") for d in dicts],
                "skipped_steps": int(self.skipped_steps)}
        return {"state": state, "param_groups": groups, "symopt": meta}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a dict from :meth:`state_dict` (every group's rule must be this optimizer's group's rule);
        every part is checked before any changes."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(self.param_groups):
            n = len(saved_groups) if isinstance(saved_groups, (list, tuple)) else "?"
            raise ValueError(f"state_dict has {n} param groups, the optimizer has {len(self.param_groups)}")
        for gi, (saved, mine) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or saved.get("rule") != mine["rule"]:
                got = saved.get("rule") if isinstance(saved, dict) else None
                raise ValueError(f"state_dict param group {gi} is for rule {got!r}, but this optimizer's group {gi} "
                                 f"runs {mine['rule']!r} (a checkpoint of groups with other rules)")
            if len(saved.get("params", ())) != len(mine["params"]):
                raise ValueError(f"state_dict param group {gi} has {len(saved.get('params', ()))} params, the "
                                 f"optimizer's has {len(mine['params'])}")
        meta = state_dict.get("symopt") or {}
        metas = meta.get("parts") or [None] * len(self.parts)
        if len(metas) != len(self.parts):
            raise ValueError(f"state_dict was saved by {len(metas)} rules, this optimizer runs {len(self.parts)}")
        parts = [{"state": {}, "param_groups": [None] * len(part.param_groups)} for part in self.parts]
        where = self._local_indices()
        j = 0
        for (p, k), saved in zip(self._order, saved_groups):
            ids = list(saved["params"])
            local = [where[j + i][1] for i in range(len(ids))]
            parts[p]["param_groups"][k] = {**{key: v for key, v in saved.items() if key not in ("params", "rule")},
                                           "params": local}
            for pid, lid in zip(ids, local):
                if pid in state_dict["state"]:
                    parts[p]["state"][lid] = state_dict["state"][pid]
            j += len(ids)
        listed = {pid for saved in saved_groups for pid in saved["params"]}
        stray = [pid for pid in state_dict["state"] if pid not in listed]
        if stray:
            raise ValueError(f"state_dict has state for param {stray[0]!r}, which no param group lists")
        for sd, m in zip(parts, metas):
            if m is not None:
                sd["symopt"] = m
        snapshots = [part.state_dict() for part in self.parts]
        try:
            for part, sd in zip(self.parts, parts):
                part.load_state_dict(sd)
        except BaseException:
            for part, snap in zip(self.parts, snapshots):
                part.load_state_dict(snap)
            self._refresh()
            raise
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        self._refresh()

    def __getstate__(self) -> dict:
        return self.__dict__.copy()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        lines = [f"symopt.torch.Optimizer {self.rule_name!r} (on_nonfinite={self.on_nonfinite!r}) ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
        return "\n".join(lines) + "\n)"
