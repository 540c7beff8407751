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

A param in any dense layout (``channels_last``...) is stepped through the flat view of
its memory, and a DTensor param (FSDP2) through its local shard (:mod:`symopt.torch.layout`).

The state lives in the runtime's flat buffers; ``opt.state[p]`` holds live tensor
views of them (``torch.from_numpy``), with ``step`` as a 0-d tensor refreshed after
every step.  ``state_dict()``/``load_state_dict()`` use torch.optim's format
(:mod:`symopt.torch.interop`).
"""

from __future__ import annotations

import functools
import warnings
from collections import defaultdict
from copy import deepcopy

import numpy as np
import torch
from torch.optim import optimizer as _torch_optimizer

from .._version import __version__
from ..runtime.matrix import dimension_numbers
from ..runtime.optimizer import Optimizer as _RuntimeOptimizer
from .backend import BackendDispatch
from .interop import (
    IMPLEMENTATION_KEYS, check_group_keys, entry_from_torch, entry_to_torch, plain_value, scalar_dtype, torch_format,
)
from .layout import core_view, is_sharded, like, local, logical, memory_order, same_layout, to_core

__all__ = ["Optimizer"]

#: Schedule-free rules: the group key of β (the interpolation weight) and its index in that value (None: the
#: value itself).  In train mode the param is y, where gradients are taken; the averaged point, where the model
#: is evaluated, is x = (y − (1 − β) z)/β.  Their averaging weights c_t = 1/t assume a constant lr.
SCHEDULE_FREE = {"sgd_schedulefree": ("momentum", None), "adamw_schedulefree": ("betas", 0)}

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



def _check_tensor(p, where: str) -> None:
    """Refuse tensors the kernels cannot step in place, naming the reason."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{where} must be a torch.Tensor, got {type(p).__name__}")
    p = local(p)                                # a DTensor is stepped through its local shard
    if p.layout != torch.strided:
        raise TypeError(f"{where} is a sparse tensor ({p.layout}); symopt steps dense CPU tensors")
    if p.device.type != "cpu":
        raise TypeError(f"{where} is on {p.device}; symopt.torch steps CPU tensors only (its kernels are "
                        f"Numba CPU code): keep the model on the CPU or use torch.optim on {p.device.type}")
    if p.dtype not in _DTYPES:
        raise TypeError(f"{where} has dtype {p.dtype}; symopt.torch steps float32 or float64 tensors "
                        f"(keep a float32 master copy for half precision)")
    if memory_order(p) is None:
        raise ValueError(f"{where} is not dense (strides {p.stride()} for shape {tuple(p.shape)}: its elements "
                         f"leave gaps or overlap); the kernels step a param in place through the one run of memory "
                         f"its elements fill (any dense layout, channels_last included): give it one "
                         f"(p.data = p.data.contiguous(), or .contiguous(memory_format=...)) before building "
                         f"the optimizer")


def _full_keys(core) -> set:
    """The state keys of ``core`` laid out as the param (the others: a factored rule's row/col states)."""
    return {key for key, kind in core.state_kinds.items() if kind in ("full", "vector")}


def _check_factored_layouts(core, params, name) -> None:
    """A factored rule reads each param's last two axes: its params must be C-contiguous and whole."""
    if _full_keys(core) == set(core.state_kinds):
        return
    for j, p in enumerate(params):
        q = local(p)
        if is_sharded(p) or not q.is_contiguous():
            raise ValueError(f"{name}: params[{j}] (shape {tuple(q.shape)}, strides {q.stride()}) is "
                             f"{'sharded' if is_sharded(p) else 'not C-contiguous'}; a factored rule's Numba kernels "
                             f"read the last two axes of each param in C order (pass .contiguous() params, unsharded, "
                             f"or backend='torch', which reads any strided layout)")


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
    g = g.detach()
    if same_layout(g, p) and memory_order(g) is not None:
        return g
    # the update is elementwise over the param's memory order: read the gradient in the param's layout
    # (empty_like keeps a dense param's strides); read only, so a copy is as good as the original
    return torch.empty_like(p, requires_grad=False).copy_(g)


class _LiveState(defaultdict):
    """``opt.state``: every param's state as live views, from construction on; true once a param has been
    stepped, as torch.optim's state is empty until then (``torch.distributed.checkpoint`` relies on that: it
    steps a fresh optimizer once with lr 0 and zero gradients, so that ``state_dict()`` has every entry to
    load a checkpoint into)."""

    def __init__(self, steps: torch.Tensor):
        super().__init__(dict)
        self._steps = steps

    def __bool__(self) -> bool:
        return bool(self._steps.any())


def _check_sharded_reductions(core, params) -> None:
    """Refuse a rule with reductions (norms, trust ratios: LAMB, LARS, clipping) over sharded DTensor params.

    The reduction kernels sum over the memory they are given; over a shard that is the shard's norm, not the
    tensor's, and symopt does not all-reduce partial sums across ranks.
    """
    variant = next(v for v in core.module.FAMILY["variants"] if v["name"] == core.variant)
    reduce = variant.get("reduce")
    if reduce is None:
        return
    sharded = [i for i, p in enumerate(params) if is_sharded(p)]
    if sharded:
        scopes = " and ".join(sorted(set(reduce["scopes"])))
        raise ValueError(f"{core.rule_name}: params {sharded} are sharded DTensors (this process holds part of each), "
                         f"but rule {core.rule_name!r} reduces over whole tensors ({scopes} sums: norms, trust "
                         f"ratios), which symopt does not all-reduce across the shards; use an elementwise rule, "
                         f"replicated params, or torch.optim's implementation of this rule")


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
    (no check, as torch.optim).  torch's ``foreach``/``fused`` keywords are accepted,
    kept in the groups as given (``state_dict()`` writes them, so ``AdamW(fused=True)``
    loading it stays fused) and otherwise ignored.  Hyperparameter values are kept as
    given, as torch.optim keeps them: a tensor ``lr`` changed in place (``lr.mul_(0.5)``,
    ``param_groups[0]["lr"].fill_(...)``) changes the next step.
    ``Optimizer(params, rule="adam", ...)`` is the same as ``Optimizer("adam", params, ...)``
    (the call torch's wrappers make, e.g. ``ZeroRedundancyOptimizer(params,
    optimizer_class=Optimizer, rule="adam", lr=...)``).

    Parameters must be dense CPU tensors of one dtype, float32 or float64, in any
    dense layout (contiguous, ``channels_last``, a transposed matrix: stepped in
    place, the layout kept; their state has the same layout).  A parameter whose
    ``.grad`` is None is skipped without advancing its step, as in torch.optim.
    Gradients are read through zero-copy views (one in another layout than its
    param's is first copied into the param's layout).
    """

    def __init__(self, rule, params=None, /, *, on_nonfinite: str = "raise", **hyper):
        if params is None:
            # Optimizer(params, rule=...): the call torch's wrappers make (optimizer_class(params, **defaults))
            if "rule" not in hyper:
                raise TypeError("symopt.torch.Optimizer needs a rule: Optimizer('adam', params, ...) or "
                                "Optimizer(params, rule='adam', ...)")
            rule, params = hyper.pop("rule"), rule
        self._core = None
        self._rule = rule
        self._on_nonfinite = on_nonfinite
        implementation = {k: hyper.pop(k) for k in list(hyper) if k in IMPLEMENTATION_KEYS}
        _check_implementation_options(implementation)
        # validates the rule, on_nonfinite and every keyword; gives the rule's defaults
        probe = _RuntimeOptimizer(rule, [np.zeros((1, 1))], on_nonfinite=on_nonfinite,
                                  **{k: plain_value(v, k) for k, v in hyper.items()})
        self.rule_name = probe.rule_name
        self._keys = tuple(probe.defaults)
        self._fmt = torch_format(rule)
        self._watch_lr()
        if self._schedule_free is not None:
            hyper.setdefault("train_mode", True)     # schedulefree's flag (there it starts False)
        # The caller's values are kept, as torch.optim keeps them: a tensor lr stays that tensor (lr.mul_(0.5)
        # changes the next step), and implementation switches (fused=True...) ride along in the groups, so
        # state_dict() writes them back unchanged.
        super().__init__(params, {**probe.defaults, **hyper, **implementation})
        self._install(*self._make_core(self.param_groups))

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group``; the new params join the compiled step (state of old ones kept)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        where = f"{self.rule_name}: param group {len(self.param_groups)}"
        if "rule" in param_group and param_group["rule"] not in (self._rule, self.rule_name):
            # torch's wrappers (ZeroRedundancyOptimizer) put the constructor's keywords, rule= too, in every group
            raise ValueError(f"{where}: rule {param_group['rule']!r}, but this optimizer runs {self.rule_name!r}")
        check_group_keys({k: v for k, v in param_group.items() if k not in ("rule", "dimension_numbers")},
                         self._keys, self._fmt, where, self.rule_name, strict=True)
        _check_implementation_options(param_group)
        if "dimension_numbers" in param_group:
            # Optax's MuonDimensionNumbers, kept as plain tuples: torch.load(weights_only=True) reads them back
            param_group = {**param_group, "dimension_numbers": dimension_numbers(param_group["dimension_numbers"], where)}
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
                views.append(core_view(local(p)))
                params.append(p)
            try:
                hyper = {k: plain_value(group[k], k) for k in self._keys}
            except KeyError as exc:
                raise ValueError(f"{self.rule_name}: param group {gi} has no value for {exc.args[0]!r}") from None
            if group.get("dimension_numbers") is not None:     # a matrix rule's reading of its params
                hyper["dimension_numbers"] = group["dimension_numbers"]
            core_groups.append({"params": views, **hyper})
        dtypes = sorted({str(p.dtype) for p in params})
        if len(dtypes) > 1:
            raise TypeError(f"{self.rule_name}: params have dtypes {', '.join(dtypes)}; one symopt.torch.Optimizer "
                            f"steps one dtype (make one optimizer per dtype)")
        core = _RuntimeOptimizer(self._rule, core_groups, on_nonfinite=self._on_nonfinite)
        _check_sharded_reductions(core, params)
        _check_factored_layouts(core, params, self.rule_name)
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
        """The current state keyed by the new index of each param (for a rebuild), in the runtime layout of
        the param as it is now (the same live views unless ``p.data`` was replaced by another layout)."""
        old = {id(p): j for j, p in enumerate(self._params)}
        live = self._core.state
        new_params = [p for g in self.param_groups for p in g["params"]]
        carried = {}
        for k, p in enumerate(new_params):
            j, q = old.get(id(p)), local(p)
            if j is None or memory_order(q) is None:    # a param that is not dense is refused by _make_core
                continue
            shape, stride = self._layouts[j]
            full = _full_keys(self._core)
            carried[k] = {key: (to_core(logical(v, shape, stride), q) if isinstance(v, np.ndarray)
                                and tuple(q.shape) == shape and key in full else v) for key, v in live[j].items()}
        return carried

    def _install(self, core, params) -> None:
        skipped = self._core.skipped_steps if self._core is not None else 0
        self._core = core
        core.skipped_steps = max(core.skipped_steps, skipped)
        self._params = params
        self._locals = locals_ = [local(p) for p in params]
        self._distributed = any(q is not p for p, q in zip(params, locals_))
        self._ptrs = [q.data_ptr() for q in locals_]
        self._sizes = [q.numel() for q in locals_]
        self._strides = [q.stride() for q in locals_]
        self._layouts = [(tuple(q.shape), q.stride()) for q in locals_]
        self._dtype = params[0].dtype if params else None
        self._seen = [[_UNSEEN] * len(self._keys) for _ in core.param_groups]
        steps = torch.zeros(len(params), dtype=scalar_dtype())
        self._steps_t = steps
        self._steps_np = steps.numpy()
        self._steps_np[:] = core.step_counts
        live = core.state
        state = _LiveState(steps)
        full = _full_keys(core)
        for j, p in enumerate(params):
            entry = {"step": steps[j]}          # a 0-d view, refreshed after every step
            for key, view in live[j].items():
                if key != "step":               # the param's layout (a row/col state: its own shape)
                    entry[key] = like(torch.from_numpy(logical(view, *self._layouts[j]) if key in full else view), p)
            state[p] = entry
        self.state = state

    # ---------------------------------------------------------------- stepping
    def _collect_grads(self):
        """``(gradients, addresses, count)``: the checked gradient tensors (or None) in the runtime's
        order, the address of each one's data (None where no gradient), and how many there are;
        ``(None, None, 0)`` if the params changed.

        The kernels read ``numel`` elements of the param's dtype at each gradient's
        address, in the param's memory order, so layout, dtype, size and strides are checked for every
        gradient, every step; each param's identity, address and size too.
        """
        params, ptrs, sizes, strides, dtype = self._params, self._ptrs, self._sizes, self._strides, self._dtype
        distributed = self._distributed
        grads = [None] * len(params)
        addresses = [None] * len(params)
        k = 0
        active = 0
        try:
            for group in self.param_groups:
                for p in group["params"]:
                    if p is not params[k]:
                        return None, None, 0
                    g = p.grad
                    if distributed:                 # DTensors: their local shards (and local gradients)
                        p = local(p)
                        g = None if g is None else local(g)
                    if p.data_ptr() != ptrs[k] or p.numel() != sizes[k]:
                        return None, None, 0
                    if g is not None:
                        if (g.layout is not _STRIDED or g.dtype is not dtype or g.numel() != sizes[k]
                                or g.stride() != strides[k]):
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
        optimizer or globally) or the autograd profiler is on.  The step is never
        traced by ``torch.compile`` (``torch.compiler.disable``): a compiled training
        step runs it eagerly, between its compiled graphs.
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

        # torch.compile (of opt.step, or of a training step calling it) runs the step as it is: Dynamo
        # would otherwise trace into Numba's dispatcher, and guard on (and recompile for) every lr value.
        # The disabled wrapper costs ~1 µs per call, so it is taken only while Dynamo traces.
        disabled = torch.compiler.disable(wrapper, reason="symopt.torch steps through compiled Numba kernels")
        is_compiling = torch.compiler.is_compiling

        @functools.wraps(func)
        def step(*args, **kwargs):
            if is_compiling():
                return disabled(*args, **kwargs)
            return wrapper(*args, **kwargs)

        return step

    def step(self, closure=None):
        """One update of every param that has a gradient; returns ``closure()``'s loss if given.

        ``closure`` (re-evaluating the model and returning the loss) runs first,
        with gradients enabled, as in torch.optim.
        """
        if self._schedule_free is not None:
            self._check_schedule_free()
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
                        cg[k] = plain_value(v, k)
                        seen[i] = v if _cacheable(v) else _UNSEEN
        except KeyError as exc:
            raise ValueError(f"{self.rule_name}: a param group lost its value for {exc.args[0]!r}") from None
        core.step_at(addresses)             # the gradients were checked above (and stay alive in grads)
        self._steps_np[:] = core.step_counts
        if active:
            # the kernels wrote through NumPy: tell autograd these tensors changed in place
            torch.autograd.graph.increment_version(
                self._locals if active == len(grads) else [p for p, g in zip(self._locals, grads) if g is not None])
        return loss

    # ------------------------------------------------------------ schedule-free
    @torch.no_grad()
    def train(self) -> None:
        """Schedule-free rules: move every param to y, where training takes gradients (schedulefree's
        ``train()``: y = x + (1 − β)(z − x)); a group already in train mode is left as is.  Other rules: nothing
        to do (their param is the point to evaluate)."""
        self._set_mode(True)

    @torch.no_grad()
    def eval(self) -> None:
        """Schedule-free rules: move every param to the averaged point x = (y − (1 − β) z)/β, where the
        model is evaluated and checkpointed (schedulefree's ``eval()``); ``step()`` then raises until
        :meth:`train`.  Other rules: nothing to do."""
        self._set_mode(False)

    def _watch_lr(self) -> None:
        """Start watching the lr of a schedule-free rule (see :meth:`_check_schedule_free`)."""
        self._schedule_free = SCHEDULE_FREE.get(self.rule_name)
        self._lr_warned = False
        self._first_lrs = None

    def _set_mode(self, train: bool) -> None:
        if self._schedule_free is None:
            return
        key, index = self._schedule_free
        steps = {id(p): n for p, n in zip(self._params, self._steps_np)}
        for group in self.param_groups:
            if bool(group.get("train_mode", True)) == train:
                continue
            beta = plain_value(group[key], key)
            beta = beta if index is None else beta[index]
            weight = 1 - beta if train else 1 - 1 / beta
            for p in group["params"]:
                if steps.get(id(p), 0):              # z exists from the first step (schedulefree's "'z' in state")
                    p.lerp_(self.state[p]["z"], weight)
            group["train_mode"] = train

    def _check_schedule_free(self) -> None:
        """Refuse a step in eval mode; warn once when the lr changes or an lr scheduler is attached."""
        if not self.param_groups[0].get("train_mode", True):
            raise RuntimeError(f"{self.rule_name}: step() in eval mode (the params are the averaged point x); call "
                               f"opt.train() before training and opt.eval() before evaluating, as with schedulefree")
        if self._lr_warned:
            return
        lrs = [plain_value(g["lr"], "lr") for g in self.param_groups]
        scheduler = getattr(self.__dict__.get("step"), "_wrapped_by_lr_sched", False)  # set by torch's LRScheduler
        if not any(lrs) and not scheduler:
            return                      # an lr-0 step (DCP initializes a fresh optimizer's state so) changes nothing
        if self._first_lrs is None:
            self._first_lrs = lrs
        if scheduler or lrs != self._first_lrs:
            self._lr_warned = True
            what = "an lr scheduler is attached" if scheduler else f"the lr changed from {self._first_lrs} to {lrs}"
            warnings.warn(f"{self.rule_name} assumes a constant lr (its averaging weights are c_t = 1/t, "
                          f"schedulefree's for r = 0 and no warm-up), but {what}: schedule-free training needs no "
                          f"schedule, and a changing lr makes the average differ from schedulefree's",
                          UserWarning, stacklevel=3)

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
        full = _full_keys(self._core)
        for j, entry in core_sd["state"].items():
            arrays = {k: (logical(v, *self._layouts[j]) if k in full else v) for k, v in entry.items() if k != "step"}
            axes = self._core.matrix_axes(j)     # SOAP's GG, Q: one entry per axis it reads (merged or not)
            out = entry_to_torch(int(entry["step"]), arrays, fmt, sdtype,
                                 self._params[j].dim() if axes is None else len(axes))
            if out is not None:
                p = self._params[j]                 # a DTensor param's state: DTensors placed as the param
                state[j] = {k: (like(v, p) if isinstance(v, torch.Tensor) and v.dim() else v)
                            for k, v in out.items()}
        fmt.write_peer(groups, state)           # a peer library's own layout (SOAP), so that it loads this too
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
        (``fused``, ``foreach``...) are kept in the groups unchanged and otherwise ignored.  Everything is checked before anything changes; a state entry
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
        id_map, new_groups, group_steps, j = {}, [], {}, 0
        for gi, (group, saved) in enumerate(zip(groups, saved_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"state_dict param group {gi} must be a dict with 'params'")
            saved, step = self._fmt.peer_group(saved)   # a peer library's own group layout (SOAP)
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"state_dict param group {gi} has {len(saved['params'])} params, the optimizer's "
                                 f"has {len(group['params'])}")
            check_group_keys({k: v for k, v in saved.items() if k != "dimension_numbers"}, self._keys, self._fmt,
                             f"state_dict param group {gi}", self.rule_name, strict=False)
            merged = {**{k: v for k, v in group.items() if k != "params"},
                      **{k: v for k, v in saved.items() if k != "params"}}
            merged["params"] = group["params"]
            new_groups.append(merged)
            for pid in saved["params"]:
                id_map[pid] = j
                group_steps[pid] = step
                j += 1
        # build the new runtime first: it validates every value and picks the variant
        core, params = self._make_core(new_groups)
        live = core.state
        full = _full_keys(core)
        label = f"rule {self.rule_name!r} (variant {core.variant!r})"
        converted = {}
        saved_state = state_dict["state"]
        if not isinstance(saved_state, dict):
            raise ValueError("state_dict['state'] must be a dict keyed by param index")
        for pid, entry in saved_state.items():
            if pid not in id_map:
                raise ValueError(f"state_dict has state for param {pid!r}, which no param group lists")
            k = id_map[pid]
            q = local(params[k])
            if isinstance(entry, dict):             # the state of a DTensor param: its local shards
                entry = {key: (local(v) if isinstance(v, torch.Tensor) else v) for key, v in entry.items()}
            keys = [key for key in live[k] if key != "step"]      # a factored rule keeps some per param shape
            shapes = {key: live[k][key].shape for key in keys if key not in full}
            got = entry_from_torch(entry, pid, keys, tuple(q.shape), self._fmt, label, shapes,
                                   group_step=group_steps[pid])
            if got is not None:
                converted[k] = {"step": got[0], **{key: (to_core(a, q) if key in full else np.array(a))
                                                   for key, a in got[1].items()}}
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
        probe = _RuntimeOptimizer(self._rule, [np.zeros((1, 1))], on_nonfinite=self._on_nonfinite)
        self.rule_name = probe.rule_name
        self._watch_lr()
        core, params = self._make_core(self.param_groups, state=carried)
        core.skipped_steps = int(sym.get("skipped_steps", 0))
        self._install(core, params)
