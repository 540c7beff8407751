"""The runtime stage: the optimizer of ``symopt.optimizer(rule, params, **hyper)`` (built by
:func:`symopt.runtime.grouped.optimizer`).

The optimizer validates everything once, allocates the state in one flat buffer
per state variable, and at every ``step(grads)``:

1. checks the gradients (count, type, shape, dtype, contiguity),
2. writes the step count ``t`` into each group's row of hyperparameters (float64),
3. makes ONE compiled call for all tensors: the kernel computes each group's per-step
   scalars (bias corrections, ``lr``...) from its row with the generated
   ``<rule>_scalar_rows`` (the compiled twin of ``<rule>_scalars(t, *hyper)``), scans
   every gradient for NaN/inf (unless ``on_nonfinite="ignore"``) and writes nothing if it
   finds one, then updates params and state in place.

Hyperparameters are kernel arguments: changing ``param_groups[i]["lr"]`` takes
effect at the next step without code generation or compilation.  Importing this
module and stepping a built-in rule never imports SymPy.
"""

from __future__ import annotations

import bisect
import math
import numbers
import os
import operator
import struct

import numpy as np

from .._version import __version__
from . import checkpoint, kernels, layout, matrix, reduction, scheduled, threads

__all__ = ["Optimizer", "NonFiniteGradientError", "save", "load"]

_DTYPE_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
#: Bytes of params updated by one step from which the threaded kernel is used (when numba has
#: >1 thread); an optimizer's ``opt.parallel_threshold`` (elements) starts at this over its itemsize
#: (98304 float32, 49152 float64).  From the serial/threaded crossover measured as the median of
#: per-round serial/threaded ratios (benchmarks/results.md, section 6; docs/performance.md, Threads):
#: between 256 and 512 KiB of params for both dtypes; below it, waking the threads costs more than
#: they save.
PARALLEL_THRESHOLD_BYTES = 3 << 17
ON_NONFINITE = ("raise", "skip", "ignore")
#: The keys of a param group that are not hyperparameters: its params, the rule it names
#: (``{"params": [...], "rule": "adamw", "lr": 3e-4}``: runtime/grouped.py steps such groups), and
#: for a matrix rule how its params are read as matrices (Optax's ``MuonDimensionNumbers``:
#: ``{"params": [...], "dimension_numbers": MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)}``;
#: runtime/matrix.py).
GROUP_KEYS = ("params", "rule", "dimension_numbers")
#: An ``Optimizer._again`` that no step matches (the first step, or a group with schedules: its row changes every step).
_NEVER_AGAIN = (object(),) * 8


class NonFiniteGradientError(FloatingPointError, ValueError):
    """A gradient held NaN or inf; nothing was modified."""


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


class _Spec:
    """The plain-data interface of a generated module (no SymPy)."""

    def __init__(self, module):
        self.module = module
        fam = module.FAMILY
        self.name = fam["name"]
        self.hyper = fam["hyper"]
        self.variants = fam["variants"]
        self.defaults: dict = {}
        tuples: dict = {}
        for h in self.hyper:
            if h["index"] is None:
                self.defaults[h["key"]] = h["default"]
            else:
                tuples.setdefault(h["key"], {})[h["index"]] = h["default"]
        for key, d in tuples.items():
            self.defaults[key] = tuple(d[i] for i in sorted(d))
        self.tuple_len = {k: len(v) for k, v in tuples.items()}
        self.keys = tuple(self.defaults)
        self.refused = fam.get("refused", {})   # a peer's keywords the family does not take -> how to get them

    def unknown(self, key, where: str) -> TypeError:
        """The error for a keyword ``key`` the family does not take."""
        if key in self.refused:
            return TypeError(f"{where}: {key} is not a keyword of {self.name}: {self.refused[key]}")
        return TypeError(f"{where}: unknown hyperparameter {key!r}; known: {', '.join(self.keys) or '(none)'}")

    def values(self, group: dict, where: str) -> dict:
        """Validated hyperparameter values keyed by generated identifier."""
        out = {}
        for h in self.hyper:
            key = h["key"]
            raw = group[key]
            label = key
            if h["index"] is not None:
                n = self.tuple_len[key]
                if not isinstance(raw, (tuple, list)) or len(raw) != n:
                    raise ValueError(f"{where}: {key!r} must be a tuple of {n} numbers, got {raw!r}")
                raw = raw[h["index"]]
                label = f"{key}[{h['index']}]"
            if h["kind"] == "choice":  # the position of the choice is the rule's value
                if not any(c is raw or (isinstance(raw, str) and c == raw) for c in h["choices"]):
                    raise ValueError(f"{where}: {label!r} must be one of "
                                     f"{', '.join(map(repr, h['choices']))}, got {raw!r}")
                out[h["name"]] = float(h["choices"].index(raw))
                continue
            if h["kind"] == "bool":
                if not isinstance(raw, (bool, np.bool_)):
                    raise TypeError(f"{where}: {label!r} must be True or False, got {raw!r}")
                out[h["name"]] = bool(raw)
                continue
            if h["kind"] == "optional" and raw is None:  # None: the rule's NONE_VALUE (rulebook/metadata.py)
                out[h["name"]] = -1.0
                continue
            if scheduled.is_schedule(raw):  # symopt.schedule: checked at t=1 here, every step when used
                out[h["name"]] = scheduled.validated(raw, h, f"{where}: {label!r}")
                continue
            if not _is_number(raw):
                raise TypeError(f"{where}: {label!r} must be a real number, got {type(raw).__name__} {raw!r}")
            x = float(raw)
            if not math.isfinite(x):
                raise ValueError(f"{where}: {label!r} must be finite, got {raw!r}")
            lo, hi = h["low"], h["high"]
            if lo is not None and (x < lo or (h["low_open"] and x == lo)):
                raise ValueError(f"{where}: invalid {label!r} = {raw!r}: must be {'>' if h['low_open'] else '>='} {lo}")
            if hi is not None and (x > hi or (h["high_open"] and x == hi)):
                raise ValueError(f"{where}: invalid {label!r} = {raw!r}: must be {'<' if h['high_open'] else '<='} {hi}")
            out[h["name"]] = x
        errors = self.module.constraints(scheduled.first_step(out))
        if errors:
            raise ValueError(f"{where}: " + "; ".join(errors))
        return out

    def variant_index(self, values: dict, where: str) -> int:
        k = self.module.select_variant(scheduled.first_step(values))
        if k < 0:
            raise ValueError(f"{where}: no variant of {self.name!r} matches {values}")
        return k


class Optimizer:
    """An optimizer over NumPy arrays, stepping a generated Numba kernel.

    ``rule``: a built-in rule name, a generated optimizer module, or a user
    :class:`symopt.Rule`/``Family`` (generated through the loader that ``import symopt``
    registers, :func:`symopt.runtime.kernels.set_user_rule_loader`).

    Attributes follow torch.optim: ``param_groups`` (list of dicts with
    ``"params"`` and hyperparameters), ``defaults``, ``state_dict()``,
    ``load_state_dict()``.  ``skipped_steps`` counts steps skipped for non-finite
    gradients under ``on_nonfinite="skip"``.

    What checkpoints and adapters read (everything else is private):
    ``rule_name``, ``variant``, ``dtype``, ``on_nonfinite``, ``params``, ``state``
    (live per-param views), ``state_keys``, ``formula_hash``, ``module`` (the
    generated module), ``step_counts`` (read-only), and :meth:`step_at`, a step
    with gradients given by address.
    """

    def __init__(self, rule, params, *, on_nonfinite: str = "raise", **hyper):
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        module = kernels.load(rule)
        spec = _Spec(module)
        self.rule_name = spec.name
        self._spec = spec
        self.on_nonfinite = on_nonfinite

        for key in hyper:
            if key not in spec.defaults:
                raise spec.unknown(key, spec.name)
        self.defaults = {**spec.defaults, **hyper}
        spec.values(self.defaults, f"{spec.name}")  # validate the defaults themselves

        groups = self._normalize_groups(params)
        tensors, group_of = [], []
        self.param_groups = []
        variant = None
        for gi, group in enumerate(groups):
            where = f"{spec.name}: param group {gi}"
            for key in group:
                if key not in GROUP_KEYS and key not in spec.defaults:
                    raise spec.unknown(key, where)
            if "rule" in group and getattr(group["rule"], "name", group["rule"]) != spec.name:
                raise ValueError(f"{where} names rule {group['rule']!r}, this optimizer runs {spec.name!r} "
                                 f"(symopt.optimizer steps groups of several rules together)")
            full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
            if "dimension_numbers" in full:
                if any("factored" in v for v in spec.variants):
                    raise ValueError(f"{where}: dimension_numbers is for Newton–Schulz rules (muon); {spec.name!r} "
                                     f"reads a param of shape (…, m, n) as a stack of m × n matrices")
                if not any("matrix" in v for v in spec.variants):
                    raise ValueError(f"{where}: dimension_numbers, but {spec.name!r} is an elementwise rule "
                                     f"(only matrix rules read params as matrices)")
                full["dimension_numbers"] = matrix.dimension_numbers(full["dimension_numbers"], where)
            vals = spec.values(full, where)
            k = spec.variant_index(vals, where)
            if variant is None:
                variant = k
            elif k != variant:
                raise ValueError(f"{where}: selects variant {spec.variants[k]['name']!r} but group 0 selects "
                                 f"{spec.variants[variant]['name']!r}; all groups must share structural options")
            plist = self._check_params(group["params"], where)
            tensors += plist
            group_of += [gi] * len(plist)
            self.param_groups.append({"params": plist, **full})
        if not tensors:
            raise ValueError(f"{spec.name}: optimizer got an empty parameter list")
        self._check_distinct(tensors)
        dtypes = {p.dtype for p in tensors}
        if len(dtypes) != 1:
            raise TypeError(f"{spec.name}: all params must share one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = tensors[0].dtype
        self._variant = variant
        self._vinfo = spec.variants[variant]
        self._tensors = tensors
        self._group_of = np.asarray(group_of, dtype=np.int64)
        self._setup_layout()
        self._init_state()
        self.skipped_steps = 0

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _normalize_groups(params):
        if isinstance(params, np.ndarray):
            raise TypeError("params must be a list of arrays (or of param-group dicts), not a single array")
        try:
            items = list(params)
        except TypeError:
            raise TypeError(f"params must be a list of arrays or of dicts, got {type(params).__name__}") from None
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        if all(isinstance(x, dict) for x in items):
            groups = []
            for i, g in enumerate(items):
                if "params" not in g:
                    raise ValueError(f"param group {i} has no 'params' key")
                ps = g["params"]
                ps = [ps] if isinstance(ps, np.ndarray) else list(ps)
                groups.append({**g, "params": ps})
            return groups
        if any(isinstance(x, dict) for x in items):
            raise TypeError("params must be all arrays or all param-group dicts, not a mix")
        return [{"params": items}]

    @staticmethod
    def _check_params(plist, where):
        out = []
        for i, p in enumerate(plist):
            name = f"{where}: params[{i}]"
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{name} must be a numpy.ndarray, got {type(p).__name__}")
            if p.dtype not in _DTYPE_SUFFIX:
                raise TypeError(f"{name} has dtype {p.dtype}; params must be float32 or float64")
            if not p.flags.c_contiguous:
                raise ValueError(f"{name} is not C-contiguous; pass np.ascontiguousarray(p) and keep that array")
            if not p.flags.writeable:
                raise ValueError(f"{name} is read-only; the optimizer updates params in place")
            out.append(p)
        return out

    @staticmethod
    def _check_distinct(tensors):
        spans = []
        for i, p in enumerate(tensors):
            if p.size:
                a = p.__array_interface__["data"][0]
                spans.append((a, a + p.nbytes, i))
        spans.sort()
        for (a0, b0, i0), (a1, b1, i1) in zip(spans, spans[1:]):
            if a1 < b0:
                raise ValueError(f"params[{i0}] and params[{i1}] share memory; each param must appear once")

    def _factor_min_dim(self, groups, where: str):
        """A factored rule's ``min_dim_size_to_factor`` (one value for all ``groups``), or None when its
        rule factors every ≥2-D param."""
        key = self._vinfo["factored"].get("min_dim_key")
        if key is None:
            return None
        values = {group.get(key, self._spec.defaults[key]) for group in groups}
        if len(values) != 1 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{where}: {key} must be one number shared by every param group (it fixes which params "
                             f"are factored), got {sorted(map(repr, values))}")
        return float(values.pop())

    def _setup_layout(self):
        sizes = np.array([p.size for p in self._tensors], dtype=np.int64)
        self._sizes = sizes
        self._offs = np.zeros(len(sizes), dtype=np.int64)
        if len(sizes) > 1:
            np.cumsum(sizes[:-1], out=self._offs[1:])
        self._total = int(sizes.sum())
        self._pptr = np.array([p.__array_interface__["data"][0] for p in self._tensors], dtype=np.int64)
        self._gptr = np.zeros(len(sizes), dtype=np.int64)
        # Memory checks of every step (check_buffers, _check_aliasing): each param's address as an int and
        # a ctypes view of its ndarray's data pointer (read without creating an object: valid as long as
        # the optimizer holds the array), the params' byte spans in address order (sorted once), the
        # grads' byte sizes, and the grad addresses last found free of overlaps.
        self._paddr = [int(a) for a in self._pptr]
        off = layout.DATA_OFFSET
        self._pdata = None if off is None else [layout._read_pointer(id(p) + off) for p in self._tensors]
        spans = sorted((int(a), int(a) + p.nbytes, j) for j, (a, p) in enumerate(zip(self._pptr, self._tensors))
                       if p.nbytes)
        self._pstart = [s[0] for s in spans]
        self._pend = [s[1] for s in spans]
        self._pspan_param = [s[2] for s in spans]
        self._gbytes = [int(n) * self.dtype.itemsize for n in sizes]
        self._grads_checked = None   # step()'s grad addresses, as a list, when _gptr holds them checked
        self._grads_seen: dict = {}  # step(): tuple of grad addresses that passed -> its address table
        self._checked_at: set = set()  # step_at(): tuples of addresses that passed
        self._gptr_scratch = self._gptr  # the table the thorough paths write (the kept ones stay intact)
        # The kernels' arguments as frames (layout.kernel_frame), by the ids of the arrays that differ between calls:
        # key -> (argument tuple, frame); each entry keeps its arrays alive, so an id in a key is never reused
        self._calls: dict = {}
        # _step_all(): what its last call was made from (address table, words table, workers, on_nonfinite, the group
        # cache entries and the values they were made from), then the kernel and the call, for the next step to repeat
        self._again = _NEVER_AGAIN
        # Work tables (runtime/layout.py): one row per tensor; per worker count and set of
        # active tensors, cached.  ``_chunks`` is the serial table over every tensor.
        self._segments = [(j, 0, int(n), int(self._group_of[j])) for j, n in enumerate(sizes)]
        self._chunks, self._work = layout.plan_rows(self._segments, 1)
        self._tables: dict = {}
        self._all_active = np.ones(len(sizes), dtype=np.bool_)
        self._shapes = [p.shape for p in self._tensors]
        # step(): the ids of the last grads and a reader of each one's data pointer (-1, None: none yet), and
        # per param what its fast path compares: (param, reader of its data pointer, that address, shape)
        self._grad_ids, self._grad_readers = [-1] * len(sizes), [None] * len(sizes)
        self._readers_by_id: dict = {}
        self._fast_rows = None if self._pdata is None else list(zip(self._tensors, self._pdata, self._paddr, self._shapes))
        # step(): when the same grads come back with everything unchanged, one compiled read of the words that
        # describe them and the params (layout.array_words): (the _grads_checked list it was made for, the table)
        self._watch = (None, None)
        self._no_words = np.zeros((2, 0), dtype=np.int64)  # a kernel's words table when there is nothing to compare
        self._no_steps = np.zeros(0, dtype=np.int64)  # a kernel's step counts when it is not to advance them
        self.parallel_threshold = PARALLEL_THRESHOLD_BYTES // self.dtype.itemsize
        # Params back to back in one buffer (symopt.flat): then the kernel steps one segment per
        # group over "tensor 0" at the buffer's address, when the grads lie back to back too.
        itemsize = self.dtype.itemsize
        self._boffs = np.where(sizes > 0, self._offs * itemsize, -1).astype(np.int64)
        pbase = int(layout.flat_base(self._pptr, self._boffs)) if len(sizes) > 1 else -1
        self._flat = None
        if pbase >= 0:
            bounds = np.concatenate([[0], np.cumsum(sizes)])            # element offset of tensor j
            first = np.cumsum([0] + [len(g["params"]) for g in self.param_groups])  # first tensor of group gi
            segs = [(0, int(bounds[first[gi]]), int(bounds[first[gi + 1]]), gi) for gi in range(len(self.param_groups))]
            self._flat = {"segments": segs, "pptr": np.array([pbase], dtype=np.int64),
                          "gptr": np.zeros(1, dtype=np.int64), "offs": np.zeros(1, dtype=np.int64)}
        self._scal = np.zeros((len(self.param_groups), max(1, self._vinfo["nscalars"])), dtype=np.float64)
        # Writes one row of per-step scalars (struct.pack_into: ~0.2 µs, numpy's setitem ~0.4 µs).
        self._scal_packer = (struct.Struct(f"={self._vinfo['nscalars']}d").pack_into, memoryview(self._scal).cast("B"),
                             self._scal.shape[1] * 8)
        # The kernels' hyperparameter rows (steps at one step count): per group the step t, then the hyperparameters
        # (float64; bools and choices as numbers), from which the kernel computes the group's row of _scal.
        # _group_values writes a row when its values change, a step writes t alone (one item of _hyp_flat) where the
        # rows do not hold it already, and a scheduled group's whole row; _no_hyp (no rows) makes a kernel read _scal
        # as given.
        ncols = 1 + len(self._vinfo["hyper"])
        self._hyp = np.zeros((len(self.param_groups), ncols), dtype=np.float64)
        self._hyp_cols = ncols
        self._hyp_flat = memoryview(self._hyp).cast("B").cast("d")
        self._hyp_packer = (struct.Struct(f"={ncols}d").pack_into, memoryview(self._hyp).cast("B"), ncols * 8)
        self._no_hyp = np.zeros((0, ncols), dtype=np.float64)
        # The step t that every row of _hyp holds (-1: not one t): _step_all's kernel advances the step counts and
        # the rows' t after each step it takes, so the next step writes t only where a row was written since.
        self._hyp_t = -1
        self._steps = np.zeros(len(sizes), dtype=np.int64)
        # the step count of every param when they are all equal, else -1 (kept with _steps: _step_all's kernel
        # advances _steps, and _step_all this mirror)
        self._t_all = 0
        self._step_counts = self._steps.view()
        self._step_counts.flags.writeable = False
        self._state_keys = tuple(s["key"] for s in self._vinfo["state"])
        # Each state's shape per param (None: not kept for that param; runtime/matrix.py) and its place
        # in the state's flat buffer; a rule of full-shape states only lays them out as the params.
        # A factored rule's layout per param (runtime/matrix.py: factored_layout), fixed at construction.
        factored = self._vinfo.get("factored")
        self._factor_min = self._factor_min_dim(self.param_groups, self.rule_name) if factored else None
        self._layouts = None if factored is None else [
            matrix.factored_layout(p.shape, self._factor_min, f"{self.rule_name}: params[{j}]")
            for j, p in enumerate(self._tensors)]
        # ... and the two axes its matrices lie along (runtime/matrix.py: factored_axes)
        self._axes = None if factored is None else [matrix.factored_axes(p.shape, self._factor_min)
                                                    for p in self._tensors]
        self._state_shapes = [[matrix.state_shape(s.get("shape", "full"), p.shape,
                                                  self._layouts[j] if self._layouts else None,
                                                  self._axes[j] if self._axes else None)
                               for j, p in enumerate(self._tensors)]
                              for s in self._vinfo["state"]]
        self._state_sizes = [np.array([0 if x is None else math.prod(x) for x in shapes], dtype=np.int64)
                             for shapes in self._state_shapes]
        self._state_offs = [np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64) if len(n) else n
                            for n in self._state_sizes]
        suffix = _DTYPE_SUFFIX[self.dtype]
        prefix = self._vinfo["prefix"]
        mod = self._spec.module
        self._scalar_fn = getattr(mod, f"{prefix}_scalars")
        self._hyper_names = self._vinfo["hyper"]
        self._cache = [None] * len(self.param_groups)   # (raw values tuple, validated values, scalar args)
        keys = self._spec.keys
        self._raw_values = (operator.itemgetter(*keys) if len(keys) > 1
                            else (lambda g, k=keys[0]: (g[k],)) if keys else (lambda g: ()))
        # None unless the rule is a matrix rule: whole tensors, one after another (runtime/matrix.py)
        dims = [self.param_groups[gi].get("dimension_numbers") for gi in self._group_of]
        self._matrix = matrix.setup(mod, self._vinfo, self._tensors, suffix, self.rule_name, self._state_offs, dims,
                                    self._layouts, self._first_scalars, self._axes)
        # the per-tensor matrix states of a preconditioned rule (runtime/preconditioned.py)
        self._matrix_state = getattr(self._matrix, "state", None)
        self._matrix_reset = getattr(self._matrix, "reset", None)
        if self._matrix is None:  # the flat-ABI kernels' twins that take their arguments as one frame
            self._kernel_serial = getattr(mod, f"{prefix}_{suffix}_frame")
            self._kernel_parallel = getattr(mod, f"{prefix}_{suffix}_parallel_frame")
        else:
            self._kernel_serial = self._kernel_parallel = None
            self._flat = None
        # None unless the rule has TensorSum/GlobalSum...: the reduction passes (runtime/reduction.py)
        self._reduce = reduction.setup(mod, self._vinfo, len(sizes), suffix)
        if self._reduce is not None:
            self._flat = None  # reduction passes need the per-tensor table
        self._tables[(1, False, None)] = (self._chunks, self._work)
        # step() takes _step_all when every param is at one step count and none of these applies
        self._plain = self._matrix is None and self._reduce is None and self._flat is None

    def _first_scalars(self, j: int) -> tuple:
        """The per-step scalars of tensor ``j``'s first step, from its group's hyperparameters."""
        args = self._group_args(int(self._group_of[j]))   # first: it may wrap _scalar_fn (schedules)
        return self._scalar_fn(1, *args)

    def _init_state(self):
        mod = self._spec.module
        init_fn = getattr(mod, f"{self._vinfo['prefix']}_state_init")
        self._state = [np.empty(int(n.sum()), dtype=self.dtype) for n in self._state_sizes]
        for gi, group in enumerate(self.param_groups):
            vals = self._spec.values(group, f"param group {gi}")
            inits = init_fn(*[scheduled.first_step(vals)[n] for n in self._vinfo["init_hyper"]])
            for j in np.nonzero(self._group_of == gi)[0]:
                self._reset_tensor_state(int(j), inits)

    def _reset_tensor_state(self, j, inits):
        for buf, offs, sizes, init in zip(self._state, self._state_offs, self._state_sizes, inits):
            o, n = int(offs[j]), int(sizes[j])
            if isinstance(init, str):
                buf[o:o + n] = self._tensors[j].reshape(-1)
            else:
                buf[o:o + n] = init
        if self._matrix_reset is not None:
            self._matrix_reset(j)

    # -------------------------------------------------------------- stepping
    @property
    def params(self) -> list:
        return list(self._tensors)

    @property
    def variant(self) -> str:
        """The name of the variant the kernel runs (e.g. ``adam.amsgrad``)."""
        return self._vinfo["name"]

    @property
    def module(self):
        """The generated module this optimizer steps (``FAMILY``, the kernels)."""
        return self._spec.module

    @property
    def formula_hash(self) -> str:
        """The hash of the variant's SymPy equations (a checkpoint's state only fits the same formula)."""
        return self._vinfo["formula_hash"]

    @property
    def state_keys(self) -> tuple:
        """The names of the state entries of every param, in the kernel's order (``exp_avg``...)."""
        return self._state_keys

    @property
    def state_kinds(self) -> dict:
        """Each state's shape by key: ``"full"`` (the param's), or a factored rule's ``"row"``, ``"col"``,
        ``"vector"`` (:func:`symopt.runtime.matrix.state_shape`)."""
        return {s["key"]: s.get("shape", "full") for s in self._vinfo["state"]}

    @property
    def factored_layouts(self) -> tuple:
        """A factored rule's layout of each param (``"matrix"``: row/column states, ``"vector"``:
        full-shape states; :func:`symopt.runtime.matrix.factored_layout`); empty for other rules."""
        return tuple(self._layouts or ())

    @property
    def factored_axes(self) -> tuple:
        """A factored rule's ``(row_axis, col_axis)`` of each param (its matrices; meaningful for the
        ``"matrix"`` layout: :func:`symopt.runtime.matrix.factored_axes`); empty for other rules."""
        return tuple(self._axes or ())

    @property
    def step_counts(self) -> np.ndarray:
        """The step count of every param (int64, read-only view, updated in place by each step)."""
        return self._step_counts

    def matrix_state_keys(self, j: int) -> tuple:
        """The names of tensor ``j``'s matrix states under a preconditioned rule (``pre_cond_0``, one per
        kept axis...; else empty)."""
        return tuple(self._matrix.keys[j]) if self._matrix_state is not None else ()

    def matrix_axes(self, j: int) -> tuple | None:
        """The axes a preconditioned rule reads tensor ``j`` as (its shape, merged where the rule merges
        axes; ``(d0, d1⋯)`` for a matrix-form rule); None for other rules."""
        return tuple(self._matrix.dims[j]) if self._matrix_state is not None else None

    def matrix_state_shapes(self, j: int) -> tuple:
        """The shapes of tensor ``j``'s matrix states, in :meth:`matrix_state_keys` order."""
        return self._matrix.shapes(j) if self._matrix_state is not None else ()

    @property
    def state(self) -> dict:
        """Per-param views of the state: ``{i: {"step": n, "exp_avg": view, ...}}`` (live, do not resize)."""
        out = {}
        for j in range(len(self._tensors)):
            entry = {"step": int(self._steps[j])}
            for key, buf, offs, shapes in zip(self._state_keys, self._state, self._state_offs, self._state_shapes):
                if shapes[j] is not None:  # a factored rule keeps some states for some params only
                    o = int(offs[j])
                    entry[key] = buf[o:o + math.prod(shapes[j])].reshape(shapes[j])
            if self._matrix_state is not None:  # a preconditioned rule's matrix states (L, R, ...)
                entry.update(self._matrix_state(j))
            out[j] = entry
        return out

    def _group_values(self, gi: int) -> dict:
        group = self.param_groups[gi]
        raw = self._raw_values(group)
        cached = self._cache[gi]
        if cached is not None and cached[0] == raw:
            return cached[1]
        where = f"{self.rule_name}: param group {gi}"
        for key in group:
            if key not in GROUP_KEYS and key not in self._spec.defaults:
                raise self._spec.unknown(key, where)
        vals = self._spec.values(group, where)
        if self._factor_min is not None and self._factor_min_dim([group], where) != self._factor_min:
            raise ValueError(f"{where}: {self._vinfo['factored']['min_dim_key']} cannot change after construction "
                             f"(it fixes which params are factored and their state shapes; was {self._factor_min:g})")
        k = self._spec.variant_index(vals, where)
        if k != self._variant:
            raise ValueError(f"{where}: these values select variant {self._spec.variants[k]['name']!r}, but this "
                             f"optimizer runs {self.variant!r}; structural options cannot change after construction "
                             f"(build a new optimizer)")
        # Lists (betas=[...]) are copied, so that changing one in place is seen at the next step.
        snapshot = tuple(list(x) if type(x) is list else x for x in raw)
        args = tuple(vals[n] for n in self._hyper_names)
        timed = scheduled.any_schedule(vals)
        self._cache[gi] = (snapshot, vals, args, timed)
        if timed:  # schedules are evaluated once per step (runtime/scheduled.py)
            self._scalar_fn = scheduled.wrap(self._scalar_fn, self._spec, self._hyper_names)
        else:  # the kernel's row of hyperparameters (its step t is written at each step)
            pack, buf, rowbytes = self._hyp_packer
            pack(buf, gi * rowbytes, 0.0, *args)
            self._hyp_t = -1
        return vals

    def _group_args(self, gi: int) -> tuple:
        """The scalar function's hyperparameter arguments of group ``gi`` (validated, cached)."""
        cached = self._cache[gi]
        if cached is None or cached[0] != self._raw_values(self.param_groups[gi]):
            self._group_values(gi)
            cached = self._cache[gi]
        return cached[2]

    def _check_grads(self, grads):
        """Validate ``grads``, write their addresses into ``_gptr``; None or a mask of the given ones.

        The common case (an ndarray of the param's dtype object, shape, C order; every
        param still writable at its address) is accepted with a few attribute reads and
        direct reads of the data pointers (:func:`symopt.runtime.layout.data_address`);
        anything else takes the thorough path below, which names the offending entry.
        Either way the gradients' memory is checked against the params' and each
        other's (:meth:`_check_aliasing`) whenever their addresses change.  The same grads
        at the same addresses twice in a row leave a table of the words that describe them
        and the params (:func:`symopt.runtime.layout.array_words`), by which :meth:`step`
        checks them from then on in one compiled call.
        """
        tensors = self._tensors
        if type(grads) is not list and type(grads) is not tuple:
            if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
                raise TypeError(f"grads must be a list of arrays, one per param, got {type(grads).__name__}")
        if len(grads) != len(tensors):
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(tensors)} params")
        off = layout.DATA_OFFSET
        if off is not None:
            ndarray, dt = np.ndarray, self.dtype
            # Every grad an ndarray of the params' dtype object, shape and C order; every param still
            # writable, at its address, with its shape.
            for g, (p, pd, pa, shape) in zip(grads, self._fast_rows):
                if (type(g) is not ndarray or g.dtype is not dt or g.shape != shape or not g.flags.c_contiguous
                        or not p.flags.writeable or pd.value != pa or p.shape != shape):
                    break
            else:
                # The grads' data pointers, read at every call through one ctypes reader per grad object:
                # the readers are looked up again only when other objects come (an id is unique among live
                # objects, the grads are alive here and all are plain ndarrays), so a grad moved to another
                # buffer in place is read at its new address.
                ids = list(map(id, grads))
                repeat = ids == self._grad_ids
                if not repeat:
                    # a reader reads whatever ndarray lives at its id, so readers are kept by id (a few
                    # sets of grads in turn, or new grads each step at recycled ids, find theirs)
                    made = self._readers_by_id
                    if len(made) > 64:
                        made.clear()
                    readers = []
                    for a in ids:
                        r = made.get(a)
                        if r is None:
                            r = made[a] = layout._read_pointer(a + off)
                        readers.append(r)
                    self._grad_readers = readers
                    self._grad_ids = ids
                addrs = [r.value or 0 for r in self._grad_readers]
                if addrs != self._grads_checked:  # other addresses than the last step's
                    key = tuple(addrs)
                    table = self._grads_seen.get(key)
                    if table is None:  # checked once per set of addresses; a few are kept, as address tables
                        table = self._gptr = np.array(addrs, dtype=np.int64)
                        self._check_aliasing(None)
                        if len(self._grads_seen) >= 16:
                            self._grads_seen.clear()
                        self._grads_seen[key] = table
                    self._gptr = table
                    self._grads_checked = addrs
                elif repeat and layout.HEADER_LAYOUT and self._watch[0] is not self._grads_checked:
                    # the same grads at the same addresses twice in a row: step() checks them, and the params
                    # (thoroughly checked here first), by their words from now on.  Made once per checked set of
                    # addresses: new grads at recycled ids and addresses each step may differ in some word at
                    # every step (then step() comes here through the checks above, as without a table).
                    self.check_buffers()
                    self._watch = (self._grads_checked, layout.array_words([*grads, *tensors]))
                return None
        self.check_buffers()
        self._grads_checked = None  # the scratch table is written below (never a kept one)
        gptr = self._gptr = self._gptr_scratch
        active = None
        for j, (g, p) in enumerate(zip(grads, tensors)):
            if g is None:
                if active is None:
                    active = np.ones(len(tensors), dtype=bool)
                active[j] = False
                continue
            if type(g) is not np.ndarray:
                if not isinstance(g, np.ndarray):
                    raise TypeError(f"grads[{j}] must be a numpy.ndarray (or None to skip), got {type(g).__name__}")
            if g.dtype != p.dtype:
                raise TypeError(f"grads[{j}] has dtype {g.dtype}, param has {p.dtype}")
            if g.shape != p.shape:
                raise ValueError(f"grads[{j}] has shape {g.shape}, param has {p.shape}")
            if not g.flags.c_contiguous:
                raise ValueError(f"grads[{j}] is not C-contiguous")
            if not p.flags.writeable:
                raise ValueError(f"params[{j}] became read-only; the optimizer updates params in place")
            gptr[j] = layout.data_address(g)
        self._check_aliasing(active)
        return active

    def step(self, grads) -> None:
        """Apply one update to every param, in place, from ``grads`` (one array per param).

        An entry may be ``None``: that param is left as is and its step count does
        not advance (torch skips params whose ``.grad`` is None the same way).
        """
        checked, table = self._watch
        if (checked is self._grads_checked and checked is not None and (type(grads) is list or type(grads) is tuple)
                and [*map(id, grads)] == self._grad_ids):
            # The last call's grad objects again (the ids of live arrays, held by ``grads``).  If each is still the
            # plain ndarray it was at the last check with the same data pointer, dtype, flags, shape and strides,
            # and every param too (address, writeable flag, shape), _gptr holds their addresses, checked: the
            # kernel compares the words itself and steps in the same call, or returns -2 having written nothing.
            again, t = self._again, self._t_all + 1
            if (again[1] is table and again[0] is self._gptr and again[3] is self.on_nonfinite and self._hyp_t == t > 0
                    and again[2] == (threads.current() if self._total >= self.parallel_threshold else 1)
                    and again[4] == self._cache and [*map(self._raw_values, self.param_groups)] == again[5]):
                # _step_all's last call again: the same address and words tables, mode and worker count, each
                # group's cached values and its values still those (no schedule), the rows of _hyp at step t
                nbad = again[6](again[7][1])
                if not nbad:
                    self._t_all = t
                    self._hyp_t = t + 1
                    return None
                if self._refused(nbad, t, again[6], again[7]) is None:
                    return None
            elif self._t_all >= 0 and self._plain:
                if self._step_all(table) is None:
                    return None
            elif layout.words_unchanged(table):
                return self._step(None)
        active = self._check_grads(grads)
        if active is None and self._t_all >= 0 and self._plain:
            self._step_all(None)
            return None
        return self._step(active)

    def step_at(self, addresses) -> None:
        """:meth:`step` with each gradient given by the address of its data (``None``: skip that param).

        For adapters that have checked the gradients themselves (``symopt.torch``:
        ``Tensor.data_ptr()``): gradient ``j`` must hold ``params[j].size`` values of
        the optimizer's dtype, contiguous, alive until the call returns.
        """
        if len(addresses) != len(self._tensors):
            raise ValueError(f"step_at got {len(addresses)} addresses but the optimizer has {len(self._tensors)} params")
        pdata, paddr, shapes = self._pdata, self._paddr, self._shapes
        for j, p in enumerate(self._tensors):
            if not p.flags.writeable or p.shape != shapes[j] or (pdata is not None and pdata[j].value != paddr[j]):
                self.check_buffers()  # raises, naming the param
        self._grads_checked = None  # the scratch table is written below (never a kept one)
        gptr = self._gptr = self._gptr_scratch
        active = None
        for j, a in enumerate(addresses):
            if a is None:
                if active is None:
                    active = np.ones(len(addresses), dtype=bool)
                active[j] = False
            else:
                gptr[j] = a
        key = tuple(addresses)
        if key not in self._checked_at:  # checked once per set of addresses (a few are kept)
            self._check_aliasing(active)
            if len(self._checked_at) >= 16:
                self._checked_at.clear()
            self._checked_at.add(key)
        return self._step(active)

    def check_buffers(self) -> None:
        """Raise ``ValueError`` if a param was moved to another buffer, reshaped or made read-only since
        the optimizer was built (the kernels write to the addresses and sizes taken then)."""
        for j, p in enumerate(self._tensors):
            addr = layout.data_address(p)
            if addr != self._paddr[j] or p.shape != self._shapes[j] or not p.flags.c_contiguous:
                raise ValueError(f"params[{j}] no longer uses the buffer and shape it had when the optimizer was "
                                 f"built (resized, reshaped or replaced); build a new optimizer")
            if not p.flags.writeable:
                raise ValueError(f"params[{j}] became read-only; the optimizer updates params in place")

    def _check_aliasing(self, active) -> None:
        """Refuse gradients (at ``_gptr``; ``active``: None or the mask of those given) whose memory overlaps
        a param (their own included) or another gradient: the kernels read each gradient while writing
        the params, in parallel threads too.  A gradient can overlap only the last param span that starts
        before it ends (the spans are sorted and disjoint), and only its neighbour in address order among
        the gradients.  The step's fast path remembers the sets of addresses that passed (a training loop
        reuses a few), so they are not checked again.
        """
        gptr, gbytes = self._gptr.tolist(), self._gbytes
        mask = None if active is None else active.tolist()
        pstart, pend = self._pstart, self._pend
        spans = []
        for j, a in enumerate(gptr):
            if (mask is not None and not mask[j]) or not gbytes[j]:
                continue
            b = a + gbytes[j]
            k = bisect.bisect_left(pstart, b) - 1
            if k >= 0 and pend[k] > a:
                self._grads_checked = None
                raise ValueError(f"grads[{j}] shares memory with params[{self._pspan_param[k]}]; a gradient must "
                                 f"not overlap any param or another gradient (pass a copy)")
            spans.append((a, b, j))
        spans.sort()
        for (a0, b0, j0), (a1, _, j1) in zip(spans, spans[1:]):
            if b0 > a1:
                self._grads_checked = None
                raise ValueError(f"grads[{j1}] shares memory with grads[{j0}]; a gradient must not overlap any "
                                 f"param or another gradient (pass a copy)")
        self._grads_checked = gptr if mask is None else None

    def _step_all(self, words):
        """:meth:`_step` of every param when all are at one step count, for an elementwise rule on separate
        arrays (no flat buffer, no reduction pass): the common step, in as few Python operations as it takes.
        The kernel computes the per-step scalars from the rows of ``_hyp`` (step t, hyperparameters).

        ``words``: None when the grads at ``_gptr`` were just checked, else the table of words
        (:func:`symopt.runtime.layout.array_words`) that must still hold for them to be the checked ones: the
        kernel compares them first.  Returns None after the step (or a skipped one), True when a word changed
        and nothing was done (then the caller checks the grads in full).  What the call was made from goes into
        ``_again``, and :meth:`step` makes the same call again while all of that still holds."""
        t = self._t_all + 1
        nworkers = threads.current() if self._total >= self.parallel_threshold else 1
        cache, groups, raw_values = self._cache, self.param_groups, self._raw_values
        stale = self._hyp_t != t  # the rows' t (the kernel advanced it after the last step, if it took it)
        timed = False
        for gi in range(len(cache)):  # _hyp_rows, inlined
            cached = cache[gi]
            if cached is None or cached[0] != raw_values(groups[gi]):  # _group_args, inlined
                self._group_values(gi)  # writes the group's row of _hyp; may wrap _scalar_fn for schedules
                cached = cache[gi]
                self._hyp_flat[gi * self._hyp_cols] = t
            if cached[3]:  # schedules: this step's values, checked (runtime/scheduled.py)
                timed = True
                pack, buf, rowbytes = self._hyp_packer
                pack(buf, gi * rowbytes, t, *self._scalar_fn.arguments(t, *cached[2]))
            elif stale:
                self._hyp_flat[gi * self._hyp_cols] = t
        self._hyp_t = t
        check = self.on_nonfinite != "ignore"
        # the kernel and its arguments as one frame, kept per worker count, address table, words table and
        # mode (each entry holds what it names, so an id in a key is never another object's)
        key = (nworkers, id(self._gptr), id(words), check)
        call = self._calls.get(key)
        if call is None:
            if nworkers > 1:
                table = self._tables.get((nworkers, False, None))
                if table is None:  # the first threaded step with this many threads plans the table
                    if words is not None:
                        return True  # checked in full first (then stepped here again)
                    return self._step(None)
            else:
                table = (self._chunks, self._work)
            call = self._call(key, (self._pptr, self._gptr, *self._state, self._offs, *table, self._scal,
                                    self._hyp, self._no_words if words is None else words, self._steps, check))
        kernel = self._kernel_parallel if nworkers > 1 else self._kernel_serial
        self._again = _NEVER_AGAIN if timed else (self._gptr, words, nworkers, self.on_nonfinite, list(cache),
                                                  [c[0] for c in cache], kernel, call)
        # the kernel advances _steps and the rows' t when it steps (not on -2, -1 or NaN/inf grads found)
        nbad = kernel(call[1])
        if nbad:
            return self._refused(nbad, t, kernel, call)
        self._t_all = t
        self._hyp_t = t + 1
        return None

    def _refused(self, nbad, t, kernel, call):
        """After :meth:`_step_all`'s kernel ``call`` for step ``t`` returned ``nbad`` (not 0: it wrote nothing):
        True when a word of the grads or params changed (-2: the caller checks the grads in full), else None
        after the step taken with Python's scalars (-1: a scalar came out NaN/inf, and Python's scalar function
        raises where it should) or the NaN/inf grads handled (:meth:`_nonfinite`)."""
        if nbad == -2:
            return True
        if nbad < 0:
            nbad = self._python_scalars(t, kernel, call[0][:-4])
            if not nbad:
                self._steps.fill(t)
                self._t_all = t
                return None
        return self._nonfinite(nbad)

    def _hyp_rows(self, t) -> None:
        """Write step ``t`` into each group's row of ``_hyp`` (a scheduled group: its values at ``t`` too)."""
        pack, buf, rowbytes = self._hyp_packer
        for gi in range(len(self._cache)):
            args = self._group_args(gi)  # first: it writes the row of new values, may wrap _scalar_fn
            if self._cache[gi][3]:
                pack(buf, gi * rowbytes, t, *self._scalar_fn.arguments(t, *args))
            else:
                self._hyp_flat[gi * self._hyp_cols] = t
        self._hyp_t = t

    def _python_scalars(self, t, kernel, kargs) -> int:
        """A step whose kernel found a per-step scalar NaN/inf (and wrote nothing), with the scalars computed by the
        Python scalar function (which raises ``ZeroDivisionError``, ``ValueError``... where the compiled one gave
        NaN/inf, before anything is written): the kernel's count of NaN/inf grads."""
        self._scalar_rows(t)
        args = (*kargs, self._no_hyp, self._no_words, self._no_steps, self.on_nonfinite != "ignore")
        return kernel(layout.kernel_frame(self.dtype, args))

    def _call(self, key, args) -> tuple:
        """``(args, frame)`` for a kernel call with arguments ``args`` (layout.kernel_frame), kept under ``key`` (ids
        of the arrays that vary between calls, each kept alive by the entry)."""
        if len(self._calls) >= 32:
            self._calls.clear()
        call = self._calls[key] = (args, layout.kernel_frame(self.dtype, args))
        return call

    def _scalar_rows(self, t) -> None:
        """Write each group's per-step scalars at step ``t`` into its row of ``_scal`` (the Python scalar
        function: for the kernels that do not compute them from ``_hyp``, and the NaN/inf fallback)."""
        pack, buf, rowbytes = self._scal_packer
        for gi in range(len(self._cache)):
            args = self._group_args(gi)  # first: it may wrap _scalar_fn to evaluate schedules
            pack(buf, gi * rowbytes, *self._scalar_fn(t, *args))

    def _nonfinite(self, nbad) -> None:
        """A step that found ``nbad`` NaN/inf gradient values (and wrote nothing): skipped, or raised."""
        if self.on_nonfinite == "skip":
            self.skipped_steps += 1
            return None
        raise NonFiniteGradientError(f"{nbad} gradient value(s) are NaN or inf; no param or state was modified "
                                     f"(on_nonfinite='skip' skips such steps, 'ignore' does not check)")

    def _step(self, active) -> None:
        """One step over the params marked in ``active`` (None: all), grads at ``_gptr`` (checked)."""
        if active is None:
            mask = self._all_active
            total = self._total
            t0 = self._t_all
        else:
            if not active.any():
                return None
            mask = active
            total = int(self._sizes[active].sum())
            t0 = layout.uniform_step(self._steps, mask)
        nworkers = threads.current() if total >= self.parallel_threshold and self._matrix is None else 1
        parallel = nworkers > 1
        ptrs = (self._pptr, self._gptr, self._offs)
        hyp = self._no_hyp
        if t0 >= 0:
            # Every stepped tensor is at step t0: one scalar row per group, cached tables.
            t = t0 + 1
            scal = self._scal
            if self._reduce is None and self._matrix is None:  # the kernel computes the scalars from _hyp
                self._hyp_rows(t)
                hyp = self._hyp
            else:
                self._scalar_rows(t)
            flat = self._flat
            if flat is not None and active is None:
                gbase = layout.flat_base(self._gptr, self._boffs)
                if gbase >= 0:
                    flat["gptr"][0] = gbase
                    ptrs = (flat["pptr"], flat["gptr"], flat["offs"])
                else:
                    flat = None
            else:
                flat = None
            key = (nworkers, flat is not None, None if active is None else active.tobytes())
            table = self._tables.get(key)
            if table is None:
                if len(self._tables) > 64:
                    self._tables.clear()
                if flat is not None:
                    segments = flat["segments"]
                else:
                    segments = [s for s, a in zip(self._segments, mask) if a]
                table = self._tables[key] = layout.plan_rows(segments, nworkers)
            chunks, work = table
        else:
            chunks, work, scal = self._rows_by_step(mask, nworkers)
        kernel = self._kernel_parallel if parallel else self._kernel_serial
        if self._reduce is not None:  # reduction passes first: per-tensor scalars (runtime/reduction.py)
            chunks, scal = self._reduce(ptrs[0], ptrs[1], self._state, ptrs[2], chunks, scal, parallel)
        if self._layouts is not None:  # a factored rule: a large stack of matrices in threads
            nbad = self._matrix(ptrs[0], ptrs[1], self._state, ptrs[2], chunks, scal, self.on_nonfinite != "ignore",
                                self.parallel_threshold)
        elif self._matrix is not None:
            nbad = self._matrix(ptrs[0], ptrs[1], self._state, ptrs[2], chunks, scal, self.on_nonfinite != "ignore")
        else:
            check = self.on_nonfinite != "ignore"
            key = (id(ptrs[0]), id(ptrs[1]), id(chunks), id(work), id(scal), id(hyp), check)
            call = self._calls.get(key)
            if call is None:
                call = self._call(key, (ptrs[0], ptrs[1], *self._state, ptrs[2], chunks, work, scal, hyp,
                                        self._no_words, self._no_steps, check))
            nbad = kernel(call[1])
            if nbad < 0:  # a scalar came out NaN/inf: Python's scalar function raises where it should
                nbad = self._python_scalars(t, kernel, call[0][:-4])
        if nbad:
            return self._nonfinite(nbad)
        if active is None and t0 >= 0:
            self._steps.fill(t0 + 1)
            self._t_all = t0 + 1
        else:
            layout.advance(self._steps, mask)
            self._t_all = layout.uniform_step(self._steps, self._all_active)
        return None

    def _rows_by_step(self, active, nworkers):
        """Work table and scalar rows when the stepped tensors' step counts differ."""
        keys = {}
        segments = []
        for j in np.nonzero(active)[0]:
            key = (int(self._group_of[j]), int(self._steps[j]) + 1)
            if key not in keys:
                keys[key] = len(keys)
            segments.append((int(j), 0, int(self._sizes[j]), keys[key]))
        scal = np.zeros((len(keys), self._scal.shape[1]), dtype=np.float64)
        for (gi, t), r in keys.items():
            args = self._group_args(gi)
            scal[r, : self._vinfo["nscalars"]] = self._scalar_fn(t, *args)
        chunks, work = layout.plan_rows(segments, nworkers)
        return chunks, work, scal

    # -------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """A torch-style state dict (deep copies): ``{"state": {i: {...}}, "param_groups": [...]}``."""
        state = {}
        for j, entry in self.state.items():
            state[j] = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in entry.items()}
        groups = []
        start = 0
        for group in self.param_groups:
            n = len(group["params"])
            g = {k: (tuple(v) if isinstance(v, list) else v) for k, v in group.items() if k != "params"}
            g["params"] = list(range(start, start + n))
            start += n
            groups.append(g)
        return {
            "state": state,
            "param_groups": groups,
            "symopt": {
                "rule": self.rule_name, "variant": self.variant, "formula_hash": self._vinfo["formula_hash"],
                "version": __version__, "dtype": str(self.dtype), "skipped_steps": int(self.skipped_steps),
            },
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a dict from :meth:`state_dict`; everything is checked before anything changes."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        meta = state_dict.get("symopt")
        if meta is not None:
            if meta.get("rule") != self.rule_name:
                raise ValueError(f"state_dict is from rule {meta.get('rule')!r}, this optimizer runs {self.rule_name!r}")
            if meta.get("formula_hash") not in (None, self._vinfo["formula_hash"]):
                raise ValueError(f"state_dict was saved from a different formula of {self.rule_name!r} "
                                 f"(variant {meta.get('variant')!r}); refusing to load")
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups) if isinstance(groups, (list, tuple)) else '?'} param groups, "
                             f"the optimizer has {len(self.param_groups)}")
        new_groups = []
        index_map = {}
        for gi, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            ids = list(saved.get("params", []))
            if len(ids) != len(mine["params"]):
                raise ValueError(f"param group {gi} of the state_dict has {len(ids)} params, the optimizer's has "
                                 f"{len(mine['params'])}")
            merged = {**mine, **{k: v for k, v in saved.items() if k != "params"}}
            if merged.get("rule", self.rule_name) != self.rule_name:
                raise ValueError(f"state_dict param group {gi} is for rule {merged['rule']!r}, not {self.rule_name!r}")
            for key in merged:
                if key not in GROUP_KEYS and key not in self._spec.defaults:
                    raise ValueError(f"state_dict param group {gi} has unknown hyperparameter {key!r}")
            if "dimension_numbers" in merged:
                if self._matrix is None:
                    raise ValueError(f"state_dict param group {gi} has dimension_numbers, but {self.rule_name!r} is an "
                                     f"elementwise rule")
                merged["dimension_numbers"] = matrix.dimension_numbers(merged["dimension_numbers"],
                                                                       f"state_dict param group {gi}")
            vals = self._spec.values(merged, f"state_dict param group {gi}")
            if self._spec.variant_index(vals, f"state_dict param group {gi}") != self._variant:
                raise ValueError(f"state_dict param group {gi} selects another variant than {self.variant!r}")
            new_groups.append(merged)
            for k, pid in enumerate(ids):
                index_map[pid] = sum(len(g["params"]) for g in self.param_groups[:gi]) + k
        new_state = {}
        saved_state = state_dict["state"]
        keys = self._state_keys
        for pid, entry in saved_state.items():
            if pid not in index_map:
                raise ValueError(f"state_dict has state for param {pid!r}, which no param group lists")
            j = index_map[pid]
            p = self._tensors[j]
            if not isinstance(entry, dict):
                raise ValueError(f"state of param {pid} must be a dict")
            kept = [key for key, shapes in zip(keys, self._state_shapes) if shapes[j] is not None]
            for key, shapes in zip(keys, self._state_shapes):
                if shapes[j] is None:
                    if entry.get(key) is not None:
                        raise ValueError(f"state of param {pid} has {key!r}, which rule {self.variant!r} does not "
                                         f"keep for a param of shape {p.shape} (it keeps {kept})")
                    continue
                if key not in entry:
                    raise ValueError(f"state of param {pid} is missing key {key!r} (rule {self.variant!r} needs "
                                     f"{kept})")
                arr = np.asarray(entry[key])
                if arr.shape != shapes[j]:
                    want = "" if shapes[j] == p.shape else f"expected {shapes[j]}, "
                    raise ValueError(f"state {key!r} of param {pid} has shape {arr.shape}, {want}the param has {p.shape}")
                if arr.dtype.kind not in "fiu":
                    raise TypeError(f"state {key!r} of param {pid} has dtype {arr.dtype}")
            mkeys = self.matrix_state_keys(j)
            for key, shape in zip(mkeys, self.matrix_state_shapes(j)):
                if key not in entry:
                    raise ValueError(f"state of param {pid} is missing the matrix state {key!r} (rule "
                                     f"{self.variant!r} needs {mkeys} for a param of shape {p.shape})")
                arr = np.asarray(entry[key])
                if arr.shape != shape or arr.dtype.kind not in "fiu":
                    raise ValueError(f"matrix state {key!r} of param {pid} is a {arr.dtype} array of shape "
                                     f"{arr.shape}; the param's is {shape}")
            new_state[j] = (_step_count(entry.get("step", 0), pid),
                            [None if shapes[j] is None else np.array(entry[k], dtype=self.dtype, copy=True)
                             for k, shapes in zip(keys, self._state_shapes)],
                            [np.array(entry[k], dtype=self.dtype, copy=True) for k in mkeys])
        skipped = 0 if meta is None else _step_count(meta.get("skipped_steps", 0), "skipped_steps")
        # Initial state of the params the dict holds no state for, computed from the new values.
        init_fn = getattr(self._spec.module, f"{self._vinfo['prefix']}_state_init")
        inits = {}
        for j in range(len(self._tensors)):
            gi = int(self._group_of[j])
            if j not in new_state and gi not in inits:
                first = scheduled.first_step(self._spec.values(new_groups[gi], f"state_dict param group {gi}"))
                inits[gi] = init_fn(*[first[n] for n in self._vinfo["init_hyper"]])
        # the saved groups' dimension_numbers win, as their hyperparameters do: the matrix layouts are rebuilt
        new_matrix = self._matrix
        dims = [new_groups[gi].get("dimension_numbers") for gi in self._group_of]
        if self._matrix is not None and dims != [self.param_groups[gi].get("dimension_numbers") for gi in self._group_of]:
            new_matrix = matrix.setup(self._spec.module, self._vinfo, self._tensors, _DTYPE_SUFFIX[self.dtype],
                                      self.rule_name, self._state_offs, dims, self._layouts, self._first_scalars,
                                      self._axes)
        if self._layouts is not None and self._factor_min_dim(new_groups, "state_dict") != self._factor_min:
            raise ValueError(f"state_dict has another {self._vinfo['factored']['min_dim_key']} than this optimizer "
                             f"({self._factor_min:g}), which fixes which params are factored; build the optimizer "
                             f"with the saved value")
        # -- everything checked and converted: now modify (nothing below can fail)
        self._matrix = new_matrix
        for gi, merged in enumerate(new_groups):
            self.param_groups[gi].update({k: v for k, v in merged.items() if k != "params"})
            self._cache[gi] = None
        for j in range(len(self._tensors)):
            if j in new_state:
                step, arrays, mats = new_state[j]
                for buf, offs, arr in zip(self._state, self._state_offs, arrays):
                    if arr is not None:
                        o = int(offs[j])
                        buf[o:o + arr.size] = arr.reshape(-1)
                if self._matrix_state is not None:
                    self._matrix.load(j, mats, started=step > 0)
                self._steps[j] = step
            else:
                self._reset_tensor_state(j, inits[int(self._group_of[j])])
                self._steps[j] = 0
        self._t_all = layout.uniform_step(self._steps, self._all_active)
        if meta is not None:
            self.skipped_steps = skipped

    def save(self, path, *, params: bool = True) -> None:
        """Write a checkpoint (``.npz``, no pickle): see :func:`symopt.save`."""
        checkpoint.write(path, self, params=params)

    def load(self, path, *, restore_params: bool = True) -> None:
        """Resume from a checkpoint written by :meth:`save` (same rule, formula, dtype, shapes)."""
        checkpoint.load_into(self, path, restore_params=restore_params)

    def __repr__(self) -> str:
        n = len(self._tensors)
        return (f"<symopt.Optimizer {self.rule_name!r} (variant {self.variant!r}): {n} param{'s' * (n != 1)}, "
                f"{self._total} elements, {self.dtype}, {len(self.param_groups)} group(s)>")


#: Largest step count a state dict or checkpoint may hold: step counts reach the per-step scalar
#: functions as float64, exact up to 2**53.
MAX_STEP = 2**53 - 1


def _step_count(value, what) -> int:
    """A step count as an int in ``[0, MAX_STEP]`` (an int, an integral float or a 0-d array of one)."""
    arr = np.asarray(value)
    if arr.shape not in ((), (1,)) or arr.dtype.kind not in "iuf":
        raise ValueError(f"state of param {what} has invalid step {value!r}")
    x = arr.reshape(()).item()
    if isinstance(x, float) and not (math.isfinite(x) and x == int(x)):
        raise ValueError(f"state of param {what} has invalid step {value!r}")
    if not 0 <= int(x) <= MAX_STEP:
        raise ValueError(f"state of param {what} has step {value!r}, outside 0..2**53-1")
    return int(x)


def save(path, opt, *, params: bool = True) -> None:
    """Write ``opt``'s state, step counts, hyperparameters and (``params=True``) param values to
    ``path`` (exactly as given, atomically); the format is :mod:`symopt.runtime.checkpoint`'s."""
    if not isinstance(opt, Optimizer):
        raise TypeError(f"save(path, opt): opt must be a symopt Optimizer, got {type(opt).__name__}")
    checkpoint.write(path, opt, params=params)


def load(path, params, rule=None, *, restore_params: bool = True, on_nonfinite: str | None = None) -> Optimizer:
    """A new optimizer over ``params`` resumed from the checkpoint at ``path``.

    ``params``: a flat list of arrays with the checkpoint's shapes and dtype (they are
    regrouped as saved) or a list of param-group dicts.  ``rule``: defaults to the
    saved built-in rule name; a user rule must be passed again (its formula hash must
    match).  With ``restore_params`` the params receive the saved values.
    """
    with checkpoint.read(path) as ck:
        rule = checkpoint.saved_rule(ck, rule, path)
        groups = checkpoint.regroup(ck, params, path)
        module = kernels.load(rule)
        hyper = checkpoint.saved_groups(ck, module, path)
        mode = ck["meta"].get("on_nonfinite", "raise") if on_nonfinite is None else on_nonfinite
        spec = _Spec(module)
        for gi, h in enumerate(hyper):  # the saved hyperparameters, checked as the optimizer will
            try:
                unknown = sorted(k for k in h if k not in spec.defaults and k not in GROUP_KEYS)
                if unknown:
                    raise ValueError(f"unknown hyperparameter(s) {unknown} for {spec.name}")
                spec.variant_index(spec.values({**spec.defaults, **h}, f"param group {gi}"), f"param group {gi}")
            except (ValueError, TypeError) as exc:
                raise checkpoint.CheckpointError(f"checkpoint {os.fspath(path)}: {exc}") from None
        opt = Optimizer(module, [{**h, **g} for g, h in zip(groups, hyper)], on_nonfinite=mode)
        checkpoint.load_into(opt, path, restore_params=restore_params, checkpoint=ck)
    return opt

