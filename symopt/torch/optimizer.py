"""``symopt.torch.Optimizer``: a ``torch.optim.Optimizer`` that steps a generated kernel.

Each ``step()`` hands the parameters and gradients of every group to one
``symopt.optimizer`` (the runtime stage) as zero-copy NumPy views --
``p.detach().numpy()`` and ``p.grad.numpy()`` share the tensors' memory -- so the
update is one compiled call that writes the parameters in place:

    θ ← rule(θ, g, state; hyperparameters of θ's group, t)

torch's ``param_groups`` are the source of truth for hyperparameters: before every
step their values are copied into the runtime's groups, so a learning-rate
scheduler (or any code) that sets ``param_groups[i]["lr"]`` changes the next step,
and no hyperparameter value ever recompiles anything.  Structural options (those
that select another kernel variant, such as ``amsgrad`` or ``momentum != 0``) are
fixed at construction or by ``load_state_dict``.

The state lives in the runtime's flat buffers; ``opt.state[p]`` holds live tensor
views of them (``torch.from_numpy``), with ``step`` as a 0-d tensor refreshed after
every step.  ``state_dict()``/``load_state_dict()`` use torch.optim's format
(:mod:`symopt.torch.interop`).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from copy import deepcopy

import numpy as np
import torch
from torch.optim import optimizer as _torch_optimizer

from .._version import __version__
from ..runtime.optimizer import Optimizer as _RuntimeOptimizer
from .backend import BackendDispatch
from .interop import (
    IMPLEMENTATION_KEYS, check_group_keys, entry_from_torch, entry_to_torch, scalar_dtype, torch_format,
)

__all__ = ["Optimizer"]

_DTYPES = (torch.float32, torch.float64)
_STRIDED = torch.strided
_IMMUTABLE = (float, int, bool)
_UNSEEN = object()


def _cacheable(value) -> bool:
    """Whether a hyperparameter value cannot change without being replaced (so identity means equality)."""
    t = type(value)
    if t in _IMMUTABLE:
        return True
    return t is tuple and all(type(x) in _IMMUTABLE for x in value)


def _plain(value, key):
    """A hyperparameter value as the runtime takes it: Python numbers, tuples of them."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"hyperparameter {key!r} must be a number or a one-element tensor, "
                            f"got a tensor of shape {tuple(value.shape)}")
        return value.item()
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v, key) for v in value)
    return value


def _check_tensor(p, where: str) -> None:
    """Refuse tensors the kernels cannot step in place, naming the reason."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{where} must be a torch.Tensor, got {type(p).__name__}")
    if p.layout != torch.strided:
        raise TypeError(f"{where} is a sparse tensor ({p.layout}); symopt steps dense CPU tensors")
    if p.device.type != "cpu":
        raise TypeError(f"{where} is on {p.device}; symopt.torch steps CPU tensors only (its kernels are "
                        f"Numba CPU code): keep the model on the CPU or use torch.optim on {p.device.type}")
    if p.dtype not in _DTYPES:
        raise TypeError(f"{where} has dtype {p.dtype}; symopt.torch steps float32 or float64 tensors "
                        f"(keep a float32 master copy for half precision)")
    if not p.is_contiguous():
        raise ValueError(f"{where} is not contiguous (strides {p.stride()} for shape {tuple(p.shape)}); "
                         f"the kernels write params in place through a flat view: make the parameter "
                         f"contiguous (p.data = p.data.contiguous()) before building the optimizer")


def _check_implementation_options(options: dict) -> None:
    for key in ("capturable", "differentiable"):
        if options.get(key):
            raise ValueError(f"{key}=True is not supported: symopt steps CPU tensors outside autograd "
                             f"and CUDA graphs ({key}=False, foreach and fused are accepted and ignored)")


def _checked_grad(g, p, where: str):
    """A gradient the fast checks did not pass: a contiguous copy, or a clear error."""
    if g.layout != _STRIDED:
        raise TypeError(f"{where} is sparse ({g.layout}); symopt steps dense gradients "
                        f"(torch.optim.SparseAdam handles sparse ones)")
    if g.device.type != "cpu":
        raise TypeError(f"{where} is on {g.device}; symopt.torch steps CPU tensors only")
    if g.dtype != p.dtype:
        raise TypeError(f"{where} has dtype {g.dtype}, the param has {p.dtype}")
    if tuple(g.shape) != tuple(p.shape):
        raise ValueError(f"{where} has shape {tuple(g.shape)}, the param has {tuple(p.shape)}")
    return g.detach().contiguous()          # read only: a copy is as good as the original


class Optimizer(torch.optim.Optimizer, metaclass=BackendDispatch):
    """A torch optimizer running any symopt rule: ``Optimizer("adam", model.parameters(), lr=1e-3)``.

    ``backend="auto"`` (default) steps dense contiguous CPU float32/float64 params with the
    Numba kernels (this class) and everything else -- CUDA or any device, bfloat16/float16,
    ``channels_last`` -- with the generated torch code (:class:`symopt.torch.backend.TensorOptimizer`);
    ``backend="numba"`` or ``"torch"`` chooses (see :mod:`symopt.torch.backend`).

    ``rule`` is a built-in name (``symopt.rules()``) or a :class:`symopt.Rule`;
    ``params`` are tensors or torch-style param groups (``{"params": ..., "lr": ...}``,
    ``model.named_parameters()`` works too); keyword arguments are the rule's
    hyperparameters with torch.optim's names and set every group's defaults.
    ``on_nonfinite`` is the runtime's: ``"raise"`` (default: a NaN/inf gradient
    raises ``symopt.NonFiniteGradientError`` before anything changes), ``"skip"``
    (the step is skipped and counted in :attr:`skipped_steps`) or ``"ignore"``
    (no check, as torch.optim).  torch's ``foreach``/``fused`` keywords are accepted
    and ignored.

    Parameters must be dense, contiguous CPU tensors of one dtype, float32 or
    float64.  A parameter whose ``.grad`` is None is skipped without advancing its
    step, as in torch.optim.  Gradients are read through zero-copy views
    (a non-contiguous gradient is copied first).
    """

    def __init__(self, rule, params, *, on_nonfinite: str = "raise", **hyper):
        self._core = None
        self._rule = rule
        self._on_nonfinite = on_nonfinite
        implementation = {k: hyper.pop(k) for k in list(hyper) if k in IMPLEMENTATION_KEYS}
        _check_implementation_options(implementation)
        hyper = {k: _plain(v, k) for k, v in hyper.items()}
        # validates the rule, on_nonfinite and every keyword; gives the rule's defaults
        probe = _RuntimeOptimizer(rule, [np.zeros(1)], on_nonfinite=on_nonfinite, **hyper)
        self.rule_name = probe.rule_name
        self._keys = tuple(probe.defaults)
        self._fmt = torch_format(rule)
        super().__init__(params, dict(probe.defaults))
        self._install(*self._make_core(self.param_groups))

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group``; the new params join the compiled step (state of old ones kept)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        where = f"{self.rule_name}: param group {len(self.param_groups)}"
        check_group_keys(param_group, self._keys, self._fmt, where, self.rule_name, strict=True)
        _check_implementation_options(param_group)
        super().add_param_group(param_group)
        try:
            for i, p in enumerate(self.param_groups[-1]["params"]):
                _check_tensor(p, f"{where}: params[{i}]")
            if self._core is not None:
                self._install(*self._make_core(self.param_groups, state=self._carried_state()))
        except BaseException:
            self.param_groups.pop()
            raise

    def _make_core(self, groups, state=None, meta=None):
        """A runtime optimizer over NumPy views of ``groups``' tensors (nothing here is modified)."""
        params, core_groups = [], []
        for gi, group in enumerate(groups):
            views = []
            for i, p in enumerate(group["params"]):
                _check_tensor(p, f"{self.rule_name}: param group {gi}: params[{i}]")
                views.append(p.detach().numpy())
                params.append(p)
            try:
                hyper = {k: _plain(group[k], k) for k in self._keys}
            except KeyError as exc:
                raise ValueError(f"{self.rule_name}: param group {gi} has no value for {exc.args[0]!r}") from None
            core_groups.append({"params": views, **hyper})
        dtypes = sorted({str(p.dtype) for p in params})
        if len(dtypes) > 1:
            raise TypeError(f"{self.rule_name}: params have dtypes {', '.join(dtypes)}; one symopt.torch.Optimizer "
                            f"steps one dtype (make one optimizer per dtype)")
        core = _RuntimeOptimizer(self._rule, core_groups, on_nonfinite=self._on_nonfinite)
        if state or meta:
            ids, start = [], 0
            for group in core_groups:
                ids.append({"params": list(range(start, start + len(group["params"])))})
                start += len(group["params"])
            sd = {"state": state or {}, "param_groups": ids}
            if meta is not None:
                sd["symopt"] = meta
            core.load_state_dict(sd)
        return core, params

    def _carried_state(self) -> dict:
        """The current state keyed by the new index of each param (for a rebuild), as live views."""
        old = {id(p): j for j, p in enumerate(self._params)}
        live = self._core.state
        new_params = [p for g in self.param_groups for p in g["params"]]
        return {k: live[old[id(p)]] for k, p in enumerate(new_params) if id(p) in old}

    def _install(self, core, params) -> None:
        skipped = self._core.skipped_steps if self._core is not None else 0
        self._core = core
        core.skipped_steps = max(core.skipped_steps, skipped)
        self._params = params
        self._ptrs = [p.data_ptr() for p in params]
        self._sizes = [p.numel() for p in params]
        self._dtype = params[0].dtype if params else None
        self._seen = [[_UNSEEN] * len(self._keys) for _ in core.param_groups]
        steps = torch.zeros(len(params), dtype=scalar_dtype())
        self._steps_t = steps
        self._steps_np = steps.numpy()
        self._steps_np[:] = core.step_counts
        live = core.state
        state = defaultdict(dict)
        for j, p in enumerate(params):
            entry = {"step": steps[j]}          # a 0-d view, refreshed after every step
            for key, view in live[j].items():
                if key != "step":
                    entry[key] = torch.from_numpy(view)
            state[p] = entry
        self.state = state

    # ---------------------------------------------------------------- stepping
    def _collect_grads(self):
        """``(gradients, addresses, count)``: the checked gradient tensors (or None) in the runtime's
        order, the address of each one's data (None where no gradient), and how many there are;
        ``(None, None, 0)`` if the params changed.

        The kernels read ``numel`` elements of the param's dtype at each gradient's
        address, so layout, dtype, size and contiguity are checked for every
        gradient, every step; each param's identity, address and size too.
        """
        params, ptrs, sizes, dtype = self._params, self._ptrs, self._sizes, self._dtype
        grads = [None] * len(params)
        addresses = [None] * len(params)
        k = 0
        active = 0
        try:
            for group in self.param_groups:
                for p in group["params"]:
                    if p is not params[k] or p.data_ptr() != ptrs[k] or p.numel() != sizes[k]:
                        return None, None, 0
                    g = p.grad
                    if g is not None:
                        if (g.layout is not _STRIDED or g.dtype is not dtype or g.numel() != sizes[k]
                                or not g.is_contiguous()):
                            g = _checked_grad(g, p, f"the gradient of param {k}")
                        grads[k] = g
                        addresses[k] = g.data_ptr()
                        active += 1
                    k += 1
        except IndexError:
            return None, None, 0
        if k != len(params):
            return None, None, 0
        return grads, addresses, active

    @staticmethod
    def profile_hook_step(func):
        """torch's step wrapper (step pre/post hooks, profiler label), skipped when it has nothing to do.

        torch.optim wraps every ``step`` in ``record_function`` and the hook loops;
        that costs several microseconds, as much as a small model's whole symopt
        step.  The full wrapper runs whenever a hook is registered (on this
        optimizer or globally) or the autograd profiler is on.
        """
        full = torch.optim.Optimizer.profile_hook_step(func)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            self = args[0]
            if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                    or _torch_optimizer._global_optimizer_pre_hooks or _torch_optimizer._global_optimizer_post_hooks
                    or torch._C._autograd._profiler_enabled()):
                return full(*args, **kwargs)
            return func(*args, **kwargs)

        return wrapper

    def step(self, closure=None):
        """One update of every param that has a gradient; returns ``closure()``'s loss if given.

        ``closure`` (re-evaluating the model and returning the loss) runs first,
        with gradients enabled, as in torch.optim.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads, addresses, active = self._collect_grads()
        if grads is None:
            # a param was replaced (p.data = ...) or param_groups were edited: rebuild, keeping state
            self._install(*self._make_core(self.param_groups, state=self._carried_state()))
            grads, addresses, active = self._collect_grads()
            if grads is None:  # pragma: no cover - the rebuild just read these params
                raise RuntimeError("symopt.torch: param_groups changed during step()")
        core = self._core
        keys = self._keys
        try:
            # torch's groups are the source of truth; copy what changed (by identity) into the runtime's
            for cg, tg, seen in zip(core.param_groups, self.param_groups, self._seen):
                for i, k in enumerate(keys):
                    v = tg[k]
                    if v is not seen[i]:
                        cg[k] = _plain(v, k)
                        seen[i] = v if _cacheable(v) else _UNSEEN
        except KeyError as exc:
            raise ValueError(f"{self.rule_name}: a param group lost its value for {exc.args[0]!r}") from None
        core.step_at(addresses)             # the gradients were checked above (and stay alive in grads)
        self._steps_np[:] = core.step_counts
        if active:
            # the kernels wrote through NumPy: tell autograd these tensors changed in place
            torch.autograd.graph.increment_version(
                self._params if active == len(grads) else [p for p, g in zip(self._params, grads) if g is not None])
        return loss

    # ------------------------------------------------------------ properties
    @property
    def skipped_steps(self) -> int:
        """Steps skipped for non-finite gradients under ``on_nonfinite="skip"``."""
        return self._core.skipped_steps

    @property
    def variant(self) -> str:
        """The kernel variant in use (e.g. ``adam.amsgrad``)."""
        return self._core.variant

    @property
    def runtime(self):
        """The underlying ``symopt`` runtime optimizer (NumPy views of the same memory)."""
        return self._core

    def __repr__(self) -> str:
        lines = [f"symopt.torch.Optimizer {self.rule_name!r} (variant {self.variant!r}, {self._core.dtype}, "
                 f"on_nonfinite={self._on_nonfinite!r}) ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
        return "\n".join(lines) + "\n)"

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """The state in torch.optim's format (tensors are copies).

        ``{"state": {i: {"step": tensor, <torch's names>: tensor}}, "param_groups":
        [{..., "params": [i, ...]}], "symopt": {rule, variant, ...}}``: a torch.optim
        class of the same algorithm loads it (it ignores the ``"symopt"`` entry),
        and so does this class.  Step counts are 0-d tensors in torch's default
        dtype; params never stepped have no entry, as in torch.optim.
        """
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        fmt = self._fmt
        core_sd = self._core.state_dict()       # deep copies
        extras = fmt.group_extras(self._keys)
        groups, start = [], 0
        for group in self.param_groups:
            packed = {**extras, **{k: v for k, v in group.items() if k != "params"}}
            packed["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(packed)
        sdtype = scalar_dtype()
        state = {}
        for j, entry in core_sd["state"].items():
            arrays = {k: v for k, v in entry.items() if k != "step"}
            out = entry_to_torch(int(entry["step"]), arrays, fmt, sdtype)
            if out is not None:
                state[j] = out
        sd = {"state": state, "param_groups": groups, "symopt": core_sd["symopt"]}
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a torch.optim-format dict (from this class or from torch.optim's class of the rule).

        The saved groups' hyperparameters replace the current ones (and may select
        another variant, e.g. ``amsgrad=True``); torch's implementation switches
        are ignored.  Everything is checked before anything changes; a state entry
        missing a key the rule needs raises ``ValueError`` naming it.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        state_dict = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        meta = state_dict.get("symopt")
        if meta is not None and meta.get("rule") != self.rule_name:
            raise ValueError(f"state_dict was saved by symopt rule {meta.get('rule')!r}; this optimizer runs "
                             f"{self.rule_name!r}")
        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(groups):
            n = len(saved_groups) if isinstance(saved_groups, (list, tuple)) else "?"
            raise ValueError(f"loaded state dict has {n} parameter groups, the optimizer has {len(groups)}")
        id_map, new_groups, j = {}, [], 0
        for gi, (group, saved) in enumerate(zip(groups, saved_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"state_dict param group {gi} must be a dict with 'params'")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"state_dict param group {gi} has {len(saved['params'])} params, the optimizer's "
                                 f"has {len(group['params'])}")
            check_group_keys(saved, self._keys, self._fmt, f"state_dict param group {gi}", self.rule_name,
                             strict=False)
            merged = {**{k: v for k, v in group.items() if k != "params"},
                      **{k: v for k, v in saved.items() if k != "params"}}
            merged["params"] = group["params"]
            new_groups.append(merged)
            for pid in saved["params"]:
                id_map[pid] = j
                j += 1
        # build the new runtime first: it validates every value and picks the variant
        core, params = self._make_core(new_groups)
        keys = [k for k in core.state[0] if k != "step"] if params else []
        label = f"rule {self.rule_name!r} (variant {core.variant!r})"
        converted = {}
        saved_state = state_dict["state"]
        if not isinstance(saved_state, dict):
            raise ValueError("state_dict['state'] must be a dict keyed by param index")
        for pid, entry in saved_state.items():
            if pid not in id_map:
                raise ValueError(f"state_dict has state for param {pid!r}, which no param group lists")
            k = id_map[pid]
            got = entry_from_torch(entry, pid, keys, tuple(params[k].shape), self._fmt, label)
            if got is not None:
                converted[k] = {"step": got[0], **got[1]}
        ids, start = [], 0
        for group in new_groups:
            ids.append({"params": list(range(start, start + len(group["params"])))})
            start += len(group["params"])
        sd = {"state": converted, "param_groups": ids}
        if meta is not None:
            sd["symopt"] = meta
        core.load_state_dict(sd)
        # -- everything checked: install
        self.param_groups = new_groups
        self._core = None                       # skipped_steps come from the loaded dict
        self._install(core, params)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    # -------------------------------------------------- pickling, deepcopy
    def __getstate__(self) -> dict:
        live = self._core.state
        state = {p: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in live[j].items()}
                 for j, p in enumerate(self._params)}
        return {"defaults": self.defaults, "state": state, "param_groups": self.param_groups,
                "_symopt": {"rule": self._rule, "on_nonfinite": self._on_nonfinite, "keys": self._keys,
                            "version": __version__,
                            "skipped_steps": self._core.skipped_steps}}

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        sym = state.pop("_symopt", None)
        saved = state.pop("state", {})
        super().__setstate__(state)
        if sym is None:
            raise ValueError("cannot restore a symopt.torch.Optimizer without its '_symopt' entry")
        self._core = None
        self._rule = sym["rule"]
        self._on_nonfinite = sym["on_nonfinite"]
        self._fmt = torch_format(self._rule)
        self._keys = tuple(sym["keys"])
        params = [p for g in self.param_groups for p in g["params"]]
        carried = {j: saved[p] for j, p in enumerate(params) if p in saved}
        probe = _RuntimeOptimizer(self._rule, [np.zeros(1)], on_nonfinite=self._on_nonfinite)
        self.rule_name = probe.rule_name
        core, params = self._make_core(self.param_groups, state=carried)
        core.skipped_steps = int(sym.get("skipped_steps", 0))
        self._install(core, params)
