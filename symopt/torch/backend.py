"""The PyTorch backend: a symopt rule stepped as torch ops, on any device, in any float dtype.

:class:`TensorOptimizer` runs the generated module ``generated/torch/<rule>.py`` (the same
plan as the Numba kernels, printed as torch ops) over the param tensors where they are:

    θ ← rule(θ, g, state; s_0..s_k)        with s = <rule>_scalars(t, hyperparameters)

* **Per-step scalars** are computed once per step and group in float64 by the rule's
  generated scalar function (the Numba module's, the same text) and handed to the step as one
  float64 tensor: changing ``lr`` or a scheduled value changes data, never the code, so a
  compiled step is never recompiled for it.
* **Arithmetic** is in float64 for float64 params, float32 otherwise (bfloat16/float16 params
  are read into float32, as the scalars are); the state is kept in ``state_dtype``
  (default: the param's dtype for float32/float64, float32 for lower precision).  The new
  param is written back rounded to nearest (``Tensor.copy_``), or, for bfloat16 params with
  ``stochastic_rounding=<seed>``, rounded up or down with probability proportional to the
  distance (a seeded ``torch.Generator`` on the param's device).
* **Matrix rules** (Muon, ``generated/torch/<rule>.py`` from ``array_matrix_module.py.jinja``): each
  param, at least 2-D, is the matrix ``d0 × (d1⋯)``; the Newton–Schulz iteration runs in the compute
  dtype (float32 for bfloat16/float16 params, where torch.optim.Muon uses bfloat16) for a count
  the module's ``<v>_count`` reads from the host's per-step scalars, so a compiled step unrolls it.
* **Factored rules** (Adafactor, ``array_factored_module.py.jinja``): each param's layout
  (:func:`~symopt.runtime.matrix.factored_layout`: a stack of matrices over two of its axes,
  :func:`~symopt.runtime.matrix.factored_axes`, or full-shape states) is fixed when its state is made;
  a param keeps only its layout's states, of their own shapes (``row_var`` ``(…, m, 1)``, ``col_var``
  ``(…, 1, n)``, as torch.optim.Adafactor), and the step receives each tensor's layout, matrix axes
  and its dtype's machine epsilon (``eps=(None, …)``).
* **Preconditioned rules** (Shampoo, SOAP, ``array_preconditioned_module.py.jinja``): each param's axes
  (merged where the rule merges them) and which of them keep matrix states are fixed when its state is
  made, from the first step's hyperparameters (:func:`~symopt.runtime.preconditioned.axes_layout`);
  its matrix states ``<key>_<axis>`` (``GG_0``, ``Q_1``...) start at ``c·I``.  The eigendecompositions
  (``torch.linalg.eigh``) and QR (``torch.linalg.qr``) run in the compute dtype, when the host's
  per-step flags (``<v>_flags``) say so: a compiled step specializes on them.
* **Non-finite gradients** (``on_nonfinite``): ``"raise"`` and ``"skip"`` write nothing when a
  gradient holds NaN/inf.  Eager, the finiteness of every gradient is reduced to one flag and
  read once per step (one host sync), before anything is written; compiled, the step computes
  the new values, keeps the old ones where the flag is false (``torch.where`` inside the fused
  graph) and the flag is read once after.  ``"ignore"`` checks nothing and never syncs.
* **Compilation** is explicit: ``compile=False`` (default) runs eagerly; ``compile=True`` (or a
  dict of ``torch.compile`` options) compiles the whole step -- every group and dtype -- into
  one graph with ``dynamic=False``, cached per optimizer, recompiled only when the set of
  params with gradients, their shapes or dtypes change.

:func:`choose_backend` is the ``backend="auto"`` rule of :class:`symopt.torch.Optimizer`.
Checkpoints are torch.optim's ``state_dict`` format (:mod:`symopt.torch.interop`), the same as
the Numba backend writes, so either loads the other's.
"""

from __future__ import annotations

import numbers
import types

import numpy as np
import torch

from .._version import __version__
from ..runtime import kernels, scheduled
from ..runtime.grouped import names_other_rules
from ..runtime.matrix import factored_axes, factored_layout, state_shape
from ..runtime.optimizer import ON_NONFINITE, NonFiniteGradientError, _Spec
from ..runtime.preconditioned import axes_layout, initial_diagonals
from .grouped import GroupedOptimizer
from .interop import (
    IMPLEMENTATION_KEYS, PASSIVE_KEYS, check_group_keys, entry_from_torch, pack_list_state, plain_value, scalar_dtype,
    torch_format,
)
from .layout import is_dense, local

__all__ = ["TensorOptimizer", "choose_backend", "BACKENDS"]

BACKENDS = ("auto", "numba", "torch")
_NUMBA_DTYPES = (torch.float32, torch.float64)
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def choose_backend(params, backend: str = "auto") -> str:
    """``"numba"`` or ``"torch"`` for these param tensors.

    ``"auto"``: the Numba kernels for dense CPU float32/float64 params of one dtype, in any dense
    layout (``channels_last`` included: stepped in place as one run of memory), where they are
    measured fastest; the torch backend for everything else -- any other device,
    bfloat16/float16, mixed dtypes, params that are not dense (strided views with gaps).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    tensors = [p for p in params if isinstance(p, torch.Tensor)]
    if not tensors:
        return "numba"  # nothing to decide on: the Numba path reports what is wrong
    numba_ok = (len({p.dtype for p in tensors}) == 1
                and all(p.device.type == "cpu" and p.layout == torch.strided and p.dtype in _NUMBA_DTYPES
                        and is_dense(local(p)) for p in tensors))
    return "numba" if numba_ok else "torch"



def _stochastic_bf16(x: torch.Tensor, generator) -> torch.Tensor:
    """float32 ``x`` rounded to bfloat16 stochastically: add 16 random low bits, then truncate."""
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, device=x.device, dtype=torch.int32, generator=generator)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def _graph_input(x):
    """``x`` as the step reads and writes it: a 0-d tensor as its 1-element view.  (dynamo, torch 2.13,
    reads a 0-d float64 input as a Python float: it restarts its analysis and drops a ``copy_`` into it.)"""
    return x.view(1) if x is not None and x.dim() == 0 else x


def _to(x, dtype):
    """``x`` (a tensor, None, or a tuple of them: a preconditioned rule's matrix states) in ``dtype``."""
    if isinstance(x, tuple):
        return tuple(_to(y, dtype) for y in x)
    return None if x is None else x.to(dtype)


def _leaves(x) -> list:
    """The tensors of ``x`` (a tensor, None or nested tuples of them), in order."""
    if isinstance(x, tuple):
        return [y for z in x for y in _leaves(z)]
    return [] if x is None else [x]


def _step_graph(step_fn, batches, masked: bool, rounding):
    """Apply ``step_fn`` to every batch ``(params, grads, states, scal, compute dtype, static args)``; write the
    results (a matrix rule's static argument: its iteration count, a Python int; a preconditioned rule's:
    its flags and each tensor's axes, with its matrix states as a last list of ``states``).

    With ``masked``, returns the one finiteness flag of all gradients and writes the old values
    where it is false (so nothing changes), without reading it on the host.
    """
    ok = None
    if masked:
        flags = [torch.isfinite(g).all() for batch in batches for g in batch[1]]
        ok = torch.stack(flags).all()
    for params, grads, states, scal, cd, static in batches:
        # a state None: one a factored rule does not keep for that param (passed through by the step)
        new = step_fn([p.to(cd) for p in params], [g.to(cd) for g in grads],
                      *[[_to(s, cd) for s in lst] for lst in states], scal, *static)
        for j, values in enumerate(new):
            targets = _leaves((params[j], *[lst[j] for lst in states]))
            for k, (dst, val) in enumerate(zip(targets, _leaves(tuple(values)))):
                if ok is not None:
                    val = torch.where(ok, val, dst.to(val.dtype))
                if k == 0 and rounding is not None and dst.dtype == torch.bfloat16:
                    dst.copy_(_stochastic_bf16(val.float(), rounding[dst.device]))
                else:
                    dst.copy_(val)
    return ok


class TensorOptimizer(torch.optim.Optimizer):
    """A torch optimizer stepping a symopt rule with torch ops (see the module docstring).

    ``symopt.torch.Optimizer(rule, params, backend="torch", ...)`` builds one; so does
    ``backend="auto"`` for params the Numba kernels do not step.  Keywords: the rule's
    hyperparameters (torch.optim's names), ``on_nonfinite`` (``"raise"``, ``"skip"``,
    ``"ignore"``), ``compile`` (False, True or a dict of ``torch.compile`` options),
    ``state_dtype`` (a torch float dtype or None), ``stochastic_rounding`` (None or an int seed;
    bfloat16 params only).  torch's ``foreach``/``fused`` are accepted and ignored.
    """

    def __init__(self, rule, params, *, on_nonfinite: str = "raise", compile=False, state_dtype=None,
                 stochastic_rounding=None, **hyper):
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f"compile must be True, False or a dict of torch.compile options, got {compile!r}")
        if state_dtype is not None and (not isinstance(state_dtype, torch.dtype) or not state_dtype.is_floating_point):
            raise TypeError(f"state_dtype must be a torch floating dtype or None, got {state_dtype!r}")
        if stochastic_rounding is not None and (isinstance(stochastic_rounding, bool)
                                                or not isinstance(stochastic_rounding, numbers.Integral)):
            raise TypeError(f"stochastic_rounding must be None or an int seed, got {stochastic_rounding!r}")
        for key in ("capturable", "differentiable"):
            if hyper.get(key):
                raise ValueError(f"{key}=True is not supported by symopt's torch backend")
        for key in IMPLEMENTATION_KEYS:
            hyper.pop(key, None)
        self._configure(rule, on_nonfinite, compile, state_dtype, stochastic_rounding)
        for key in hyper:
            if key not in self._spec.defaults:
                raise self._spec.unknown(key, self.rule_name)
        defaults = {**self._spec.defaults, **{k: plain_value(v, k) for k, v in hyper.items()}}
        self._spec.values(defaults, self.rule_name)
        self.skipped_steps = 0
        super().__init__(params, defaults)
        self._bind_variant()
        for group in self.param_groups:
            for p in group["params"]:
                self._init_param_state(p, group)

    def _configure(self, rule, on_nonfinite, compile, state_dtype, seed) -> None:
        """Everything but params, groups and state: the rule's modules, options, the compiled step."""
        module = kernels.load(rule)
        self._spec = _Spec(module)
        self.rule_name = self._spec.name
        self._rule = rule
        self._fmt = torch_format(rule)
        self._keys = self._spec.keys
        self.on_nonfinite = on_nonfinite
        self.state_dtype = state_dtype
        self._compile = compile
        self._seed = seed
        self._generators: dict = {}
        self._variant = None
        self._torch_module = kernels.load_backend(rule, "torch")
        # a rule that reads each param as a matrix (Muon; not one that preconditions every axis)
        self._matrix = any("matrix" in v and not v["matrix"].get("every_axis") for v in self._spec.variants)
        self._compiled = None
        if compile is not False:
            # A private copy of the step's code object: dynamo caches graphs per code object, so
            # every optimizer keeps its own graphs (and its own recompilation limit).
            code = types.FunctionType(_step_graph.__code__.replace(), _step_graph.__globals__, "_step_graph")
            options = {"dynamic": False, **(compile if isinstance(compile, dict) else {})}
            self._compiled = torch.compile(code, **options)

    # ------------------------------------------------------------- pickling, deepcopy
    def __getstate__(self) -> dict:
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups,
                "_symopt": {"rule": self._rule, "on_nonfinite": self.on_nonfinite, "compile": self._compile,
                            "state_dtype": self.state_dtype, "seed": self._seed,
                            "skipped_steps": self.skipped_steps}}

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        sym = state.pop("_symopt", None)
        if sym is None:
            raise ValueError("cannot restore a symopt TensorOptimizer without its '_symopt' entry")
        super().__setstate__(state)
        self._configure(sym["rule"], sym["on_nonfinite"], sym["compile"], sym["state_dtype"], sym["seed"])
        self.skipped_steps = sym["skipped_steps"]
        self._bind_variant()

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group``, with the group's keys and params checked first."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        where = f"{self.rule_name}: param group {len(self.param_groups)}"
        check_group_keys(param_group, self._keys, self._fmt, where, self.rule_name, strict=True)
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"{where}: params[{i}] must be a torch.Tensor, got {type(p).__name__}")
            if p.layout != torch.strided:
                raise TypeError(f"{where}: params[{i}] is a sparse tensor ({p.layout}); symopt steps dense tensors")
            if not p.dtype.is_floating_point or p.dtype.itemsize > 8:
                raise TypeError(f"{where}: params[{i}] has dtype {p.dtype}; symopt steps float tensors")
            if self._matrix and p.dim() < 2:
                raise ValueError(f"{where}: params[{i}] has shape {tuple(p.shape)}; {self.rule_name} reads each param "
                                 f"as a matrix (at least 2-D: d0 × (d1⋯)); give 1-D params a param group with "
                                 f"another rule ({{'params': [...], 'rule': 'adamw'}})")
        super().add_param_group({**param_group, "params": params})
        group = self.param_groups[-1]
        try:
            values = self._spec.values({k: plain_value(group[k], k) for k in self._keys}, where)
            variant = self._spec.variant_index(values, where)
            if self._variant is not None and variant != self._variant:
                raise ValueError(f"{where}: selects variant {self._spec.variants[variant]['name']!r}, the optimizer "
                                 f"runs {self.variant!r}; all groups must share structural options")
            if self._variant is not None:
                self._check_factored([group], where)
        except BaseException:
            self.param_groups.pop()
            raise
        if self._variant is not None:
            for p in group["params"]:
                self._init_param_state(p, group)

    def _bind_variant(self) -> None:
        first = self.param_groups[0]
        values = self._spec.values({k: plain_value(first[k], k) for k in self._keys}, self.rule_name)
        self._variant = self._spec.variant_index(values, self.rule_name)
        self._vinfo = self._spec.variants[self._variant]
        prefix = self._vinfo["prefix"]
        self._scalar_fn = getattr(self._spec.module, f"{prefix}_scalars")
        self._init_fn = getattr(self._spec.module, f"{prefix}_state_init")
        self._step_fn = getattr(self._torch_module, f"{prefix}_step")
        # a matrix rule: its iteration count, a Python int from the host's per-step scalars
        self._count_fn = getattr(self._torch_module, f"{prefix}_count", None)
        # a preconditioned rule: the flags of its matrix operations (host), its matrix states' keys
        self._flags_fn = getattr(self._torch_module, f"{prefix}_flags", None)
        self._matrix_keys = (tuple(s["key"] for s in self._vinfo["matrix"]["states"])
                             if self._flags_fn is not None else ())
        self._axes_cache: dict = {}
        self._state_keys = tuple(s["key"] for s in self._vinfo["state"])
        self._cache: dict = {}
        # a factored rule: each state's shape kind, the layout of each param shape (fixed by the one
        # min_dim_size_to_factor of every group, or None: every ≥2-D param is factored)
        self._factored = self._vinfo.get("factored")
        self._state_kinds = {s["key"]: s.get("shape", "full") for s in self._vinfo["state"]}
        self._layouts: dict = {}
        self._factor_min = None
        if self._factored is not None and self._factored.get("min_dim_key") is not None:
            self._factor_min = self._min_dim(self.param_groups[0])
        self._check_factored(self.param_groups, self.rule_name)

    def _min_dim(self, group) -> float:
        key = self._factored["min_dim_key"]
        value = plain_value(group[key], key)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{self.rule_name}: {key} must be a number, got {value!r}")
        return float(value)

    def _check_factored(self, groups, where: str) -> None:
        """A factored rule: every group has this optimizer's min_dim_size_to_factor (it fixes each
        param's layout and state shapes) and every param has a layout (ValueError naming it otherwise)."""
        if self._factored is None:
            return
        key = self._factored.get("min_dim_key")
        for group in groups:
            if key is not None and self._min_dim(group) != self._factor_min:
                raise ValueError(f"{where}: {key} must be one number shared by every param group and cannot change "
                                 f"after construction (it fixes which params are factored and their state shapes; "
                                 f"this optimizer's is {self._factor_min:g})")
            for i, p in enumerate(group["params"]):
                self._layout(p, f"{where}: params[{i}]")

    def _layout(self, p, where: str = "") -> str:
        """A factored rule's layout of param ``p``: ``"matrix"`` or ``"vector"`` (by its shape)."""
        shape = tuple(p.shape)
        if shape not in self._layouts:
            self._layouts[shape] = factored_layout(shape, self._factor_min, where or self.rule_name)
        return self._layouts[shape]

    def _axes(self, p, group) -> tuple:
        """A preconditioned rule's ``(dims, kept)`` of param ``p`` under ``group``'s first-step scalars
        (:func:`~symopt.runtime.preconditioned.axes_layout`)."""
        self._group_values(group)
        _, _, args, scalar_fn = self._cache[id(group)]
        key = (tuple(p.shape), args)
        if key not in self._axes_cache:
            host = scalar_fn(1, *args)
            dims, kept = axes_layout(self._spec.module, self._vinfo, tuple(p.shape), host, self.rule_name)
            self._axes_cache[key] = (dims, tuple(kept), initial_diagonals(self._vinfo, host))
        return self._axes_cache[key]

    def _group_of(self, p):
        return next(g for g in self.param_groups if any(q is p for q in g["params"]))

    def _state_shapes(self, p) -> dict:
        """``{key: shape}`` of the states param ``p`` keeps (a factored rule keeps some per layout, a
        preconditioned rule its matrix states ``<key>_<axis>`` per kept axis)."""
        if self._flags_fn is not None:
            dims, kept, _ = self._axes(p, self._group_of(p))
            return {**{key: tuple(p.shape) for key in self._state_keys},
                    **{f"{key}_{k}": (d, d) for key in self._matrix_keys for k, d in enumerate(dims) if kept[k]}}
        if self._factored is None:
            return {key: tuple(p.shape) for key in self._state_keys}
        layout, axes = self._layout(p), factored_axes(tuple(p.shape), self._factor_min)
        shapes = {key: state_shape(self._state_kinds[key], tuple(p.shape), layout, axes) for key in self._state_keys}
        return {key: shape for key, shape in shapes.items() if shape is not None}

    @property
    def variant(self) -> str:
        """The variant of the rule this optimizer steps (e.g. ``adam.amsgrad``)."""
        return self._vinfo["name"]

    def _state_dtype(self, p) -> torch.dtype:
        if self.state_dtype is not None:
            return self.state_dtype
        return p.dtype if p.dtype in _NUMBA_DTYPES else torch.float32

    @staticmethod
    def _compute_dtype(p) -> torch.dtype:
        return torch.float64 if p.dtype == torch.float64 else torch.float32

    def _init_param_state(self, p, group) -> None:
        values = self._group_values(group)
        first = scheduled.first_step(values)
        inits = self._init_fn(*[first[n] for n in self._vinfo["init_hyper"]])
        entry = {"step": 0}
        sd = self._state_dtype(p)
        shapes = self._state_shapes(p)
        with torch.no_grad():
            for key, init in zip(self._state_keys, inits):
                if key not in shapes:
                    continue            # a state a factored rule does not keep for this param's layout
                entry[key] = (p.detach().to(sd).clone() if isinstance(init, str)
                              else torch.full(shapes[key], float(init), dtype=sd, device=p.device))
            if self._flags_fn is not None:  # matrix states c·I on each kept axis
                dims, kept, diagonals = self._axes(p, group)
                for key, c in zip(self._matrix_keys, diagonals):
                    for k, d in enumerate(dims):
                        if kept[k]:
                            entry[f"{key}_{k}"] = c * torch.eye(d, dtype=sd, device=p.device)
        self.state[p] = entry

    def _group_values(self, group) -> dict:
        raw = tuple(plain_value(group[k], k) for k in self._keys)
        cached = self._cache.get(id(group))
        if cached is not None and cached[0] == raw:
            return cached[1]
        index = next((i for i, g in enumerate(self.param_groups) if g is group), len(self.param_groups))
        where = f"{self.rule_name}: param group {index}"
        values = self._spec.values(dict(zip(self._keys, raw)), where)
        self._check_factored([group], where)
        if self._spec.variant_index(values, where) != self._variant:
            raise ValueError(f"{where}: these values select another variant than {self.variant!r}; structural "
                             f"options cannot change after construction (build a new optimizer)")
        scalar_fn = self._scalar_fn
        if scheduled.any_schedule(values):
            scalar_fn = scheduled.wrap(scalar_fn, self._spec, self._vinfo["hyper"])
        self._cache[id(group)] = (raw, values, tuple(values[n] for n in self._vinfo["hyper"]), scalar_fn)
        return values

    # ---------------------------------------------------------------- stepping
    def _batches(self):
        """``(batches, stepped params)``: the params with gradients, by (group, step, compute dtype)."""
        batches: dict = {}
        stepped = []
        for group in self.param_groups:
            self._group_values(group)
            _, _, args, scalar_fn = self._cache[id(group)]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise TypeError(f"{self.rule_name}: sparse gradients are not supported")
                if g.shape != p.shape or g.device != p.device:
                    raise ValueError(f"{self.rule_name}: a gradient of shape {tuple(g.shape)} on {g.device} for a "
                                     f"param of shape {tuple(p.shape)} on {p.device}")
                entry = self.state[p]
                t = entry["step"] + 1
                key = (id(group), t, self._compute_dtype(p), p.device)
                batch = batches.get(key)
                if batch is None:
                    host = scalar_fn(t, *args)
                    scal = torch.tensor(host, dtype=torch.float64)
                    static = (() if self._count_fn is None and self._flags_fn is None else
                              (self._count_fn(host),) if self._count_fn is not None else (self._flags_fn(host), []))
                    batch = batches[key] = ([], [], [[] for _ in range(len(self._state_keys) + bool(self._flags_fn))],
                                            scal.to(p.device, non_blocking=True), key[2], static)
                batch[0].append(_graph_input(p))
                batch[1].append(_graph_input(g))
                for lst, k in zip(batch[2], self._state_keys):
                    # None: a state a factored rule does not keep for this param
                    lst.append(_graph_input(entry.get(k)))
                if self._flags_fn is not None:  # the matrix states per axis (None: an axis without) and the axes
                    dims, kept, _ = self._axes(p, group)
                    mats = tuple(tuple(entry.get(f"{m}_{k}") if kept[k] else None for k in range(len(dims)))
                                 for m in self._matrix_keys)
                    held = sum(1 for k in entry if k.rpartition("_")[0] in self._matrix_keys)
                    if held != sum(kept) * len(self._matrix_keys) or any(
                            m is not None and m.shape[0] != d for ms in mats for m, d in zip(ms, dims)) or any(
                            m is None and kept[k] for ms in mats for k, m in enumerate(ms)):
                        raise ValueError(f"{self.rule_name}: a param of shape {tuple(p.shape)}: these hyperparameters "
                                         f"change which axes keep matrix states (or how axes merge), which is fixed "
                                         f"when its state is made (build a new optimizer)")
                    batch[2][-1].append(mats)
                    batch[5][1].append(dims)
                stepped.append(p)
        if self._factored is not None:   # per tensor: its layout, matrix axes, dtype's machine epsilon (Python data)
            return [(*b[:5], (tuple(self._layout(p) for p in b[0]),
                              tuple(factored_axes(tuple(p.shape), self._factor_min) for p in b[0]),
                              tuple(torch.finfo(p.dtype).eps for p in b[0])))
                    for b in batches.values()], stepped
        if self._flags_fn is not None:
            return [(*b[:5], (b[5][0], tuple(b[5][1]))) for b in batches.values()], stepped
        return list(batches.values()), stepped

    def _generator(self, device):
        if device not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(int(self._seed))
            self._generators[device] = gen
        return self._generators[device]

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every param with a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        batches, stepped = self._batches()
        if not batches:
            return loss
        rounding = None
        if self._seed is not None:
            rounding = {p.device: self._generator(p.device) for p in stepped if p.dtype == torch.bfloat16} or None
        check = self.on_nonfinite != "ignore"
        if self._compiled is not None:
            ok = self._compiled(self._step_fn, batches, check, rounding)
        else:
            ok = None
            if check:
                ok = torch.stack([torch.isfinite(g).all() for b in batches for g in b[1]]).all()
                if not bool(ok):
                    return self._nonfinite(batches, loss)
            _step_graph(self._step_fn, batches, False, rounding)
        if ok is not None and not bool(ok):
            return self._nonfinite(batches, loss)
        for p in stepped:
            self.state[p]["step"] += 1
        return loss

    def _nonfinite(self, batches, loss):
        if self.on_nonfinite == "skip":
            self.skipped_steps += 1
            return loss
        nbad = int(sum(int((~torch.isfinite(g)).sum()) for b in batches for g in b[1]))
        raise NonFiniteGradientError(f"{nbad} gradient value(s) are NaN or inf; no param or state was modified "
                                     f"(on_nonfinite='skip' skips such steps, 'ignore' does not check)")

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """torch.optim's format (:mod:`symopt.torch.interop`), as the Numba backend writes it."""
        fmt = self._fmt
        extras = fmt.group_extras(self._keys)
        sdtype = scalar_dtype()
        groups, state, start = [], {}, 0
        index = {}
        for group in self.param_groups:
            packed = {**extras, **{k: v for k, v in group.items() if k != "params"}}
            packed["params"] = list(range(start, start + len(group["params"])))
            for p in group["params"]:
                index[p] = start
                start += 1
            groups.append(packed)
        for p, i in index.items():
            entry = self.state[p]
            if entry["step"] == 0 and not fmt.eager_state:
                continue
            out = {}
            if fmt.step_in_state:
                out["step"] = torch.tensor(float(entry["step"]), dtype=sdtype)
            for key in (*self._state_keys, *(k for k in entry if k.rpartition("_")[0] in self._matrix_keys)):
                if key not in entry:
                    continue                # a state a factored rule does not keep for this param
                value = entry[key]
                if key in fmt.scalar_state:
                    out[key] = torch.tensor(float(value.reshape(-1)[0]) if value.numel() else 1.0, dtype=sdtype)
                else:
                    out[key] = value.detach().clone()
            if self._flags_fn is not None:  # SOAP's GG, Q: one list entry per axis it reads (merged or not)
                pack_list_state(out, fmt, len(self._axes(p, self._group_of(p))[0]))
            state[i] = out
        fmt.write_peer(groups, state)       # a peer library's own layout (SOAP), so that it loads this too
        meta = {"rule": self.rule_name, "variant": self.variant, "formula_hash": self._vinfo["formula_hash"],
                "version": __version__, "dtype": str(self.param_groups[0]["params"][0].dtype).replace("torch.", ""),
                "skipped_steps": int(self.skipped_steps), "backend": "torch"}
        return {"state": state, "param_groups": groups, "symopt": meta}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a torch.optim-format dict (from either backend or from torch.optim's class of the rule);
        everything is checked before anything changes."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        meta = state_dict.get("symopt")
        if meta is not None and meta.get("rule") != self.rule_name:
            raise ValueError(f"state_dict was saved by symopt rule {meta.get('rule')!r}; this optimizer runs "
                             f"{self.rule_name!r}")
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has the wrong number of parameter groups "
                             f"(the optimizer has {len(self.param_groups)})")
        params, new_values, group_steps = {}, [], {}
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(saved, dict) or len(saved.get("params", ())) != len(group["params"]):
                raise ValueError(f"state_dict param group {gi} does not match the optimizer's (number of params)")
            saved, step = self._fmt.peer_group(saved)   # a peer library's own group layout (SOAP)
            check_group_keys(saved, self._keys, self._fmt, f"state_dict param group {gi}", self.rule_name,
                             strict=False)
            merged = {k: plain_value(saved.get(k, group[k]), k) for k in self._keys}
            values = self._spec.values(merged, f"state_dict param group {gi}")
            self._check_factored([{**merged, "params": group["params"]}], f"state_dict param group {gi}")
            if self._spec.variant_index(values, f"state_dict param group {gi}") != self._variant:
                raise ValueError(f"state_dict param group {gi} selects another variant than {self.variant!r}")
            new_values.append({k: saved[k] for k in saved if k != "params" and k not in IMPLEMENTATION_KEYS
                               and k not in PASSIVE_KEYS and k in self._keys})
            for pid, p in zip(saved["params"], group["params"]):
                params[pid] = p
                group_steps[pid] = step
        label = f"rule {self.rule_name!r} (variant {self.variant!r})"
        converted = {}
        for pid, entry in state_dict["state"].items():
            if pid not in params:
                raise ValueError(f"state_dict has state for param {pid!r}, which no param group lists")
            p = params[pid]
            shapes = self._state_shapes(p)      # a factored rule: the layout's states, of their own shapes
            got = entry_from_torch(entry, pid, list(shapes), tuple(p.shape), self._fmt, label,
                                   {k: v for k, v in shapes.items() if v != tuple(p.shape)},
                                   group_step=group_steps[pid])
            if got is not None:
                converted[p] = got
        # -- everything checked: install
        for group, values in zip(self.param_groups, new_values):
            group.update(values)
        self._cache.clear()
        for group in self.param_groups:
            for p in group["params"]:
                if p in converted:
                    step, arrays = converted[p]
                    sd = self._state_dtype(p)
                    entry = {"step": step}
                    for key in arrays:  # a copy: the dict's tensors stay the caller's (a live optimizer's state)
                        entry[key] = torch.as_tensor(np.ascontiguousarray(arrays[key])).to(p.device, sd, copy=True)
                    self.state[p] = entry
                else:
                    self._init_param_state(p, group)
        if meta is not None:
            self.skipped_steps = int(meta.get("skipped_steps", 0))

    def __repr__(self) -> str:
        lines = [f"symopt.torch.Optimizer {self.rule_name!r} (variant {self.variant!r}, backend 'torch', "
                 f"compile={self._compile!r}, on_nonfinite={self.on_nonfinite!r}) ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
        return "\n".join(lines) + "\n)"


#: Keywords only the torch backend takes: given to ``backend="auto"``, they choose it.
TORCH_ONLY = frozenset({"compile", "state_dtype", "stochastic_rounding"})


def _materialized(params):
    """``params`` as a list (generators consumed once), each group's ``"params"`` a list too."""
    if isinstance(params, torch.Tensor):
        return [params]
    items = list(params)
    return [({**x, "params": [x["params"]] if isinstance(x["params"], torch.Tensor) else list(x["params"])}
             if isinstance(x, dict) and "params" in x else x) for x in items]


def _tensors(items) -> list:
    out = []
    for x in items:
        if isinstance(x, dict):
            out += _tensors(x.get("params", []))
        elif isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], torch.Tensor):
            out.append(x[1])
        else:
            out.append(x)
    return out


class BackendDispatch(type):
    """The metaclass of :class:`symopt.torch.Optimizer`: ``backend=`` picks the class that steps.

    ``Optimizer(rule, params, backend="auto" | "numba" | "torch", **kw)`` builds the Numba-backed
    optimizer or a :class:`TensorOptimizer` (:func:`choose_backend`; with ``"auto"``, a keyword
    of :data:`TORCH_ONLY` chooses the torch backend), or, when a param group names another rule
    (``{"params": [...], "rule": "adamw"}``), a :class:`~symopt.torch.grouped.GroupedOptimizer` of one
    such optimizer per rule; ``isinstance(opt, symopt.torch.Optimizer)`` holds for all three.
    """

    def __call__(cls, rule=None, params=None, /, *args, backend: str = "auto", **kw):
        if params is None and "params" in kw:
            params = kw.pop("params")
        if params is None:
            # Optimizer(params, rule=...): the call torch's wrappers make (optimizer_class(params, **defaults))
            rule, params = None, rule
        if rule is None:
            if "rule" not in kw:
                raise TypeError("symopt.torch.Optimizer needs a rule: Optimizer('adam', params, ...) or "
                                "Optimizer(params, rule='adam', ...)")
            rule = kw.pop("rule")
        if params is None:
            raise TypeError("symopt.torch.Optimizer needs params: Optimizer('adam', params, ...)")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        params = _materialized(params)
        if names_other_rules(rule, params):
            options = {k: kw.pop(k) for k in TORCH_ONLY & set(kw)}
            return GroupedOptimizer(cls, rule, params, *args, backend=backend, options=options, **kw)
        choice = backend
        if backend == "auto":
            choice = "torch" if TORCH_ONLY & set(kw) else choose_backend(_tensors(params))
        if choice == "torch":
            return TensorOptimizer(rule, params, *args, **kw)
        given = sorted(TORCH_ONLY & set(kw))
        if given:
            raise TypeError(f"{', '.join(given)} apply to the torch backend only; this optimizer uses the Numba "
                            f"kernels (backend={backend!r})")
        return super().__call__(rule, params, *args, **kw)

    def __instancecheck__(cls, obj) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        if cls.__name__ != "Optimizer":
            return False
        return isinstance(obj, (TensorOptimizer, GroupedOptimizer))
