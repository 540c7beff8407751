"""One rule's generated functions, called directly: ``symopt.kernel(rule, dtype, **options)``.

The generated module of a rule (``generated/<rule>.py``, or the user cache) holds, per
variant and dtype, besides the flat-ABI kernels that :class:`~symopt.runtime.optimizer.Optimizer`
calls:

* ``<v>_element_<dtype>(p, g, *state, *scalars) -> (p_new, *state_new)``: the update of one
  element, ``@numba.njit(inline="always")`` (up to 30 arguments: CPython passes more as
  ``*args``, which numba cannot inline); the flat-ABI kernels call it in their loop, and a
  user's ``@numba.njit`` loop can call it the same way (it is inlined there);
* ``<v>_step_<dtype>[_parallel](param, grad, *state, scalars, check)``: one step of one
  tensor of any shape, in place: the flat-ABI kernel on a one-tensor chunk table (after the
  reduction pass for rules with reductions), returning the number of NaN/inf gradients;
* ``<v>_tensor_scalars_<dtype>(param, grad, *state, scalars)`` (rules with reductions only):
  the element function's scalars for one tensor, per-step then per-tensor.

:class:`RuleKernel` hands these out with the per-step scalars and state initial values of
the same module, checked as :func:`symopt.optimizer` checks them.  ``step``,
``step_parallel`` and ``tensor_scalars`` are :class:`CheckedFunction` objects with two faces:

* inside ``@numba.njit`` code (as a global or an argument) numba types them as the generated
  function itself (:func:`_typeof_checked` registers that): no checks, ``check`` required;
* called from Python they check their arrays and scalars first (the optimizer's errors) and
  run the module's flat-ABI kernels (their ``_frame`` twins) on the one tensor -- the very compiled
  code that ``symopt.optimizer`` runs, so nothing more is compiled -- with ``check=True`` by default
  (a NaN/inf raises :class:`~symopt.runtime.optimizer.NonFiniteGradientError`).

Everything stays in the one generated module and numba's cache of it; a user's njit
function that calls ``step`` links the flat-ABI kernel into itself, as numba does for
every njit-to-njit call.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import kernels, layout, scheduled, threads
from .optimizer import NonFiniteGradientError, _Spec


__all__ = ["kernel", "RuleKernel", "CheckedFunction"]

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def kernel(rule, dtype="float32", **options) -> "RuleKernel":
    """The generated functions of ``rule`` in ``dtype`` (see :class:`RuleKernel`).

    ``rule``: a built-in rule name, a :class:`symopt.Rule` (composed or not) or a
    ``Family``; ``options``: hyperparameter values, as for :func:`symopt.optimizer`:
    they select the variant (``amsgrad=True``) and become the defaults of
    :meth:`RuleKernel.scalars` and :meth:`RuleKernel.init_state`.
    """
    return RuleKernel(rule, dtype, **options)


def _typeof_checked():
    """Let numba type a :class:`CheckedFunction` as the generated function it wraps."""
    from numba.core import types
    from numba.extending import typeof_impl

    @typeof_impl.register(CheckedFunction)
    def _typeof(val, c):
        return types.Dispatcher(val.njit)


class CheckedFunction:
    """A generated ``@numba.njit`` function of one tensor, checked when called from Python.

    ``njit`` is the generated function (``<v>_step_<dtype>[_parallel]`` or
    ``<v>_tensor_scalars_<dtype>``).  Inside ``@numba.njit`` code (a global or an
    argument) numba types this object as ``njit`` itself and calls it without checks;
    there ``check`` is a required argument.  Called from Python, it checks each array
    (type, dtype, shape, C-contiguity, writability, no overlap of written arrays) and the
    scalars, raising ``TypeError`` or ``ValueError`` before anything is written, then runs
    the module's flat-ABI kernels -- the compiled code ``symopt.optimizer`` runs -- on the
    one tensor (``check`` defaults to True; a nonzero NaN/inf count then raises
    :class:`symopt.NonFiniteGradientError`, nothing having been written).
    """

    _registered = False

    def __init__(self, njit, owner: "RuleKernel", kind: str):
        if not CheckedFunction._registered:
            _typeof_checked()
            CheckedFunction._registered = True
        self.njit = njit
        self.__doc__ = njit.__doc__
        self.__name__ = njit.__name__
        self._owner = owner
        self._kind = kind          # "step", "step_parallel" or "tensor_scalars"

    def __call__(self, *args, check=None):
        k = self._owner
        counts = self._kind != "tensor_scalars"
        if check is not None and not counts:
            raise TypeError(f"{self.__name__} takes no check argument")
        narrays = 2 + len(k.state_names)
        extra = 1 if counts else 0
        if not narrays + 1 <= len(args) <= narrays + 1 + extra:
            names = ", ".join(("param", "grad", *k.state_names, "scalars"))
            raise TypeError(f"{self.__name__} takes ({names}{', check' if extra else ''}), "
                            f"got {len(args)} positional argument(s)")
        if len(args) > narrays + 1:
            if check is not None:
                raise TypeError(f"{self.__name__}: check given twice")
            check = args[-1]
        check = True if check is None else check
        if not isinstance(check, (bool, np.bool_)):
            raise TypeError(f"{self.__name__}: check must be True or False, got {check!r}")
        arrays = args[:narrays]
        scalars = k._check_scalars(args[narrays], self.__name__)
        k._check_arrays(arrays, self.__name__, writes=counts)
        if not counts:
            return k._run(arrays, scalars, None, False)
        nbad = k._run(arrays, scalars, bool(check), self._kind == "step_parallel")
        if nbad:
            raise NonFiniteGradientError(f"{nbad} gradient value(s) are NaN or inf; no param or state was modified "
                                         f"(check=False does not check)")
        return nbad

    def __repr__(self) -> str:
        return f"<symopt checked {self.__name__}>"


class RuleKernel:
    """One variant of a rule in one dtype: its generated functions, called directly.

    ``state_names``: the state keys in order; ``init_state(param)``: new state arrays;
    ``scalars(t, **hyper)``: the per-step scalars (tuple of float64) of step ``t``;
    ``element``: ``@numba.njit(inline="always")`` ``(p, g, *state, *scalars) -> (p_new,
    *state_new)``; ``step`` / ``step_parallel``: ``(param, grad, *state, scalars,
    check=True) -> NaN/inf count``, in place (:class:`CheckedFunction`: from Python, checked,
    raising on NaN/inf; inside ``@numba.njit`` code, the generated function, ``check``
    required, the count returned).

    Rules with tensor or global reductions (``has_reduction``): the element function
    takes the per-tensor scalars after the per-step ones, and ``tensor_scalars(param,
    grad, *state, scalars)`` computes that whole row for one tensor (its reduction
    pass; a global sum then covers this tensor only).  ``step`` runs the pass itself.
    """

    def __init__(self, rule, dtype="float32", **options):
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dt not in _SUFFIX:
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        module = kernels.load(rule)
        spec = _Spec(module)
        for key in options:
            if key not in spec.defaults:
                raise spec.unknown(key, spec.name)
        self._spec = spec
        self.module = module
        self.rule_name = spec.name
        self.dtype = dt
        self.defaults = {**spec.defaults, **options}
        values = spec.values(self.defaults, spec.name)
        self._variant = spec.variant_index(values, spec.name)
        info = spec.variants[self._variant]
        if "matrix" in info or "factored" in info:
            raise TypeError(f"{spec.name} is a matrix rule (its update reads the whole matrix, not one element "
                            "at a time): it has no element or one-tensor kernel; step it with symopt.optimizer")
        self._info = info
        self.variant = info["name"]
        self.state_names = tuple(s["key"] for s in info["state"])
        self.nscalars = info["nscalars"]
        self.has_reduction = info.get("reduce") is not None
        self.ntensor_scalars = info["reduce"]["ntensor"] if self.has_reduction else 0
        prefix, suffix = info["prefix"], _SUFFIX[dt]
        self._scalar_fn = getattr(module, f"{prefix}_scalars")
        self._init_fn = getattr(module, f"{prefix}_state_init")
        self.element = getattr(module, f"{prefix}_element_{suffix}")
        self.step = CheckedFunction(getattr(module, f"{prefix}_step_{suffix}"), self, "step")
        self.step_parallel = CheckedFunction(getattr(module, f"{prefix}_step_{suffix}_parallel"), self,
                                             "step_parallel")
        self.tensor_scalars = (CheckedFunction(getattr(module, f"{prefix}_tensor_scalars_{suffix}"), self,
                                               "tensor_scalars") if self.has_reduction else None)
        # What the Python calls run: the flat-ABI kernels that symopt.optimizer runs.
        # the flat-ABI kernels' frame twins: the optimizer's very entry points
        self._kernels = (getattr(module, f"{prefix}_{suffix}_frame"), getattr(module, f"{prefix}_{suffix}_parallel_frame"))
        self._reduce = ((getattr(module, f"{info['reduce']['kernel']}_{suffix}"),
                         getattr(module, f"{info['reduce']['kernel']}_{suffix}_parallel"))
                        if self.has_reduction else None)
        self._tables: dict = {}   # (size, workers) -> (chunks, work)

    # ------------------------------------------------------------------ hyperparameters
    def _values(self, hyper: dict, where: str) -> dict:
        for key in hyper:
            if key not in self._spec.defaults:
                raise self._spec.unknown(key, where)
        values = self._spec.values({**self.defaults, **hyper}, where)
        k = self._spec.variant_index(values, where)
        if k != self._variant:
            raise ValueError(f"{where}: {hyper} selects variant {self._spec.variants[k]['name']!r}, this kernel runs "
                             f"{self.variant!r}; pass those options to symopt.kernel")
        return values

    def scalars(self, t, **hyper) -> tuple:
        """The per-step scalars of step ``t`` (1, 2, ...) as a tuple of float64.

        ``hyper``: hyperparameter values (torch.optim's names), defaulting to the kernel's
        options and the rule's defaults, checked as :func:`symopt.optimizer` checks them; a
        :mod:`symopt.schedule` value is evaluated at ``t``.
        """
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral) or t < 1:
            raise ValueError(f"{self.rule_name}: the step t must be an integer >= 1, got {t!r}")
        values = self._values(hyper, f"{self.rule_name}.scalars")
        names = self._info["hyper"]
        fn = self._scalar_fn
        if scheduled.any_schedule(values):
            fn = scheduled.wrap(fn, self._spec, names)
        return tuple(float(x) for x in fn(int(t), *[values[n] for n in names]))

    def init_state(self, param, **hyper) -> tuple:
        """New state arrays for ``param`` (one per ``state_names`` entry, its shape and the kernel's dtype),
        holding the rule's initial values (a state that starts as the param is a copy of it)."""
        self._check_arrays((param,), f"{self.rule_name}.init_state", writes=False, names=("param",))
        first = scheduled.first_step(self._values(hyper, f"{self.rule_name}.init_state"))
        inits = self._init_fn(*[first[n] for n in self._info["init_hyper"]])
        return tuple(param.copy() if v == "param" else np.full(param.shape, v, dtype=self.dtype) for v in inits)

    # ------------------------------------------------------------------ Python calls
    def _run(self, arrays, scalars: tuple, check, parallel: bool):
        """The flat-ABI kernel (``check`` None: the reduction pass only, returning its row) on one
        tensor: its elements split among numba's threads as the optimizer splits them."""
        param, grad, *state = arrays
        n = param.size
        nworkers = threads.current() if parallel else 1
        table = self._tables.get((n, nworkers))
        if table is None:
            if len(self._tables) > 64:
                self._tables.clear()
            table = self._tables[(n, nworkers)] = layout.plan_rows([(0, 0, n, 0)], nworkers)
        chunks, work = table
        pptr = np.array([layout.data_address(param)], dtype=np.int64)
        gptr = np.array([layout.data_address(grad)], dtype=np.int64)
        offs = np.zeros(1, dtype=np.int64)
        flat = [s.reshape(-1) for s in state]
        scal = np.zeros((1, max(1, self.nscalars)))
        scal[0, :self.nscalars] = scalars
        if self._reduce is not None:
            ext = np.zeros((1, self.nscalars + self.ntensor_scalars))
            self._reduce[parallel](pptr, gptr, *flat, offs, chunks, scal, ext)
            if check is None:
                return ext[0]
            scal = ext
        args = (pptr, gptr, *flat, offs, chunks, work, scal, np.empty((0, 1)), np.empty((2, 0), dtype=np.int64),
                np.empty(0, dtype=np.int64), bool(check))
        return self._kernels[parallel](layout.kernel_frame(self.dtype, args))  # args live until it returns

    # ------------------------------------------------------------------ checks
    def _check_scalars(self, scalars, where: str) -> tuple:
        n = self.nscalars
        if not isinstance(scalars, (tuple, list)) or len(scalars) != n:
            raise TypeError(f"{where}: scalars must be the tuple of {n} float(s) that {self.rule_name}.scalars(t) "
                            f"returns, got {scalars!r}")
        out = []
        for x in scalars:
            if not isinstance(x, numbers.Real):
                raise TypeError(f"{where}: scalars must be real numbers, got {type(x).__name__} {x!r}")
            out.append(float(x))
        return tuple(out)

    def _check_arrays(self, arrays, where: str, *, writes: bool, names=None) -> None:
        names = names or ("param", "grad", *self.state_names)
        shape = None
        for name, a in zip(names, arrays):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{where}: {name} must be a numpy.ndarray, got {type(a).__name__}")
            if a.dtype != self.dtype:
                raise TypeError(f"{where}: {name} has dtype {a.dtype}; this kernel runs {self.dtype}")
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                raise ValueError(f"{where}: {name} has shape {a.shape}, param has {shape}")
            if not a.flags.c_contiguous:
                raise ValueError(f"{where}: {name} is not C-contiguous; pass np.ascontiguousarray({name}) and keep "
                                 f"that array")
            if writes and name != "grad" and not a.flags.writeable:
                raise ValueError(f"{where}: {name} is read-only; the step updates it in place")
        if writes:
            written = [(n, a) for n, a in zip(names, arrays) if n != "grad"]
            for i, (n0, a0) in enumerate(written):
                for n1, a1 in [*written[i + 1:], ("grad", arrays[1])]:
                    if a0.size and a1.size and np.may_share_memory(a0, a1):
                        raise ValueError(f"{where}: {n0} and {n1} share memory; each must be its own array")

    def __repr__(self) -> str:
        return (f"<symopt.kernel {self.rule_name!r} (variant {self.variant!r}, {self.dtype}): "
                f"state {self.state_names}, {self.nscalars} scalars>")
