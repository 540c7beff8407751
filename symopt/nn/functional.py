"""Runtime of the losses and activations: generated kernels behind checked NumPy calls.

No SymPy here: the kernels live in the checked-in ``symopt.generated.nn_*``
modules (see :mod:`symopt.codegen.emit`), whose ``SPEC`` dictionaries
describe them.  Every public call checks its arrays first and raises
``ValueError``/``TypeError`` naming the argument: wrong shapes, NaN/inf, targets
outside the loss's domain (probabilities in [0, 1], signs ±1, integer labels in
``[0, classes)``), unknown names or hyperparameters.

>>> import numpy as np, symopt.nn as nn
>>> ce = nn.loss("softmax_cross_entropy")
>>> value, grad = ce.value_and_grad(np.array([[1000.0, -1000.0]]), np.array([1]))
>>> value                      # log-sum-exp: no overflow
2000.0
"""

from __future__ import annotations

import importlib
import math
import numbers
import pkgutil

import numpy as np

__all__ = ["Activation", "Loss", "activation", "activation_names", "loss", "loss_names"]

_PREFIX = {"loss": "nn_loss_", "activation": "nn_act_"}
_DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _names(kind: str) -> list:
    from .. import generated

    prefix = _PREFIX[kind]
    return sorted(m.name[len(prefix):] for m in pkgutil.iter_modules(generated.__path__) if m.name.startswith(prefix))


def loss_names() -> list:
    """Names of every loss with generated kernels."""
    return _names("loss")


def activation_names() -> list:
    """Names of every activation with generated kernels."""
    return _names("activation")


def _load(kind: str, name) -> object:
    if not isinstance(name, str):
        raise TypeError(f"{kind} must be given by name (str), got {type(name).__name__}")
    known = _names(kind)
    if name not in known:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(known)}")
    return importlib.import_module(f"symopt.generated.{_PREFIX[kind]}{name}")


def _hyper_values(spec: dict, given: dict) -> tuple:
    keys = {h["key"]: h for h in spec["hyper"]}
    for k in given:
        if k not in keys:
            raise TypeError(f"{spec['name']}: unknown keyword argument {k!r}; known: {', '.join(keys) or '(none)'}")
    out = []
    for h in spec["hyper"]:
        raw = given.get(h["key"], h["default"])
        if not isinstance(raw, numbers.Real) or isinstance(raw, (bool, np.bool_)):
            raise TypeError(f"{spec['name']}: {h['key']!r} must be a real number, got {raw!r}")
        v = float(raw)
        lo, hi = h["low"], h["high"]
        if not math.isfinite(v) or (lo is not None and (v < lo or (h["low_open"] and v == lo))) or \
                (hi is not None and (v > hi or (h["high_open"] and v == hi))):
            bound = f"{'(' if h['low_open'] else '['}{lo}, {'inf' if hi is None else hi}{')' if h['high_open'] else ']'}"
            raise ValueError(f"{spec['name']}: {h['key']!r} = {raw!r} is outside {bound}")
        out.append(v)
    return tuple(out)


def _as_float_array(a, what: str, dtype=None) -> np.ndarray:
    if isinstance(a, np.ndarray):
        arr = a
    else:
        try:
            arr = np.asarray(a)
        except (TypeError, ValueError) as exc:  # pragma: no cover - numpy's own message is kept
            raise TypeError(f"{what} must be an array of numbers: {exc}") from None
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    if dtype is None:
        dtype = arr.dtype if arr.dtype in _DTYPES else np.dtype(np.float64)
    return np.ascontiguousarray(arr, dtype=dtype)


def check_finite(arr: np.ndarray, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` and the first position if ``arr`` holds NaN or inf."""
    if arr.size and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        pos = tuple(int(i) for i in bad)
        raise ValueError(f"{what} contains {arr[pos]} at index {pos if len(pos) > 1 else pos[0]} "
                         f"(NaN/inf inputs are not accepted)")


def check_labels(y, n: int, classes: int, what: str = "y") -> np.ndarray:
    """Integer labels of shape ``(n,)`` with values in ``[0, classes)``, as int64."""
    arr = y if isinstance(y, np.ndarray) else np.asarray(y)
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise TypeError(f"{what} must hold integer class labels, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},) (one label per sample), got {arr.shape}")
    if n and (arr.min() < 0 or arr.max() >= classes):
        bad = arr[(arr < 0) | (arr >= classes)][0]
        raise ValueError(f"{what} holds the label {int(bad)}, outside the {classes} classes [0, {classes})")
    return np.ascontiguousarray(arr, dtype=np.int64)


class _Kernels:
    def __init__(self, module, names):
        self.by_dtype = {sfx: {n: getattr(module, f"{n}_{sfx}") for n in names} for sfx in ("f32", "f64")}


class Loss:
    """A generated loss: ``value(z, y)`` and ``value_and_grad(z, y)`` of the batch mean.

    ``z`` is the prediction (logits for the cross-entropies), float32 or float64
    (other numbers are converted to float64); ``y`` the target: same shape as
    ``z``, or integer labels of shape ``(batch,)`` for ``softmax_cross_entropy``
    (``z`` of shape ``(batch, classes)``).  The gradient is with respect to ``z``
    of the mean loss, in ``z``'s dtype.
    """

    def __init__(self, name: str, **hyper):
        self.module = _load("loss", name)
        self.spec = self.module.SPEC
        self.name = self.spec["name"]
        self.hyper = _hyper_values(self.spec, hyper)
        self.rowwise = self.spec["shape"] == "rowwise"
        self._k = _Kernels(self.module, ("value", "value_and_grad"))

    def __repr__(self) -> str:
        return f"<symopt.nn.Loss {self.name!r}>"

    def latex(self) -> str:
        """LaTeX of the definition (and derivative) as SymPy printed it when the kernels were generated."""
        lat = self.spec["latex"]
        return lat["definition"] if "derivative" not in lat else \
            f"\\ell = {lat['definition']}, \\qquad \\frac{{\\partial \\ell}}{{\\partial z}} = {lat['derivative']}"

    def check(self, z, y):
        """Checked, contiguous ``(z, y)`` (see the class doc); raises ValueError/TypeError."""
        z = _as_float_array(z, "z (the prediction)")
        check_finite(z, "z (the prediction)")
        if z.size == 0:
            raise ValueError("z (the prediction) is empty")
        if self.rowwise and z.ndim != 2:
            raise ValueError(f"{self.name}: z must have shape (batch, classes), got {z.shape}")
        return z, self.check_target(y, z.shape, z.dtype)

    def check_target(self, y, shape: tuple, dtype, what: str = "y (the target)") -> np.ndarray:
        """The target for predictions of ``shape``: labels (int64) or an array of ``dtype``."""
        if self.rowwise:
            return check_labels(y, shape[0], shape[1], what)
        y = _as_float_array(y, what, dtype)
        if y.shape != tuple(shape):
            raise ValueError(f"{self.name}: {what} must have the shape of the prediction {tuple(shape)}, "
                             f"got {y.shape}")
        check_finite(y, what)
        kind = self.spec["target_kind"]
        if kind == "probability" and y.size and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"{self.name}: {what} must hold probabilities in [0, 1], got values in "
                             f"[{y.min()}, {y.max()}]")
        if kind == "sign" and not np.all(np.abs(y) == 1):
            bad = y[np.abs(y) != 1][0]
            raise ValueError(f"{self.name}: {what} must be -1 or +1, got {bad}")
        return y

    def _count(self, z) -> int:
        return z.shape[0] if self.rowwise else z.size

    def value(self, z, y) -> float:
        """Mean loss over the batch."""
        z, y = self.check(z, y)
        return self._value(z, y)

    __call__ = value

    def value_and_grad(self, z, y, out=None):
        """``(mean loss, ∂ mean / ∂z)``; ``out`` (optional) receives the gradient."""
        z, y = self.check(z, y)
        if out is not None and (not isinstance(out, np.ndarray) or out.shape != z.shape or out.dtype != z.dtype
                                or not out.flags.c_contiguous or not out.flags.writeable):
            raise ValueError(f"out must be a writable C-contiguous {z.dtype} array of shape {z.shape}")
        return self._value_and_grad(z, y, out)

    # Unchecked fast paths (arrays already checked by the caller).
    def _value(self, z, y) -> float:
        k = self._k.by_dtype[_DTYPES[z.dtype]]["value"]
        if self.rowwise:
            return float(k(z, y, *self.hyper)) / z.shape[0]
        return float(k(z.reshape(-1), y.reshape(-1), *self.hyper)) / z.size

    def _value_and_grad(self, z, y, out=None):
        if out is None:
            out = np.empty_like(z)
        k = self._k.by_dtype[_DTYPES[z.dtype]]["value_and_grad"]
        n = self._count(z)
        if self.rowwise:
            total = k(z, y, 1.0 / n, out, *self.hyper)
        else:
            total = k(z.reshape(-1), y.reshape(-1), 1.0 / n, out.reshape(-1), *self.hyper)
        return float(total) / n, out


class Activation:
    """A generated activation: ``forward(x)`` and ``backward(x, y, g) = g ⊙ f′(x)``.

    Elementwise activations take arrays of any shape; ``softmax`` works on the
    last axis (rows of a 2-D array; a 1-D array is one row) and its backward pass
    is the vector-Jacobian product.  ``y`` is ``forward(x)``: derivatives such as
    ``1 − y²`` use it.
    """

    def __init__(self, name: str, **hyper):
        self.module = _load("activation", name)
        self.spec = self.module.SPEC
        self.name = self.spec["name"]
        self.hyper = _hyper_values(self.spec, hyper)
        self.rowwise = self.spec["shape"] == "rowwise"
        self._k = _Kernels(self.module, ("forward", "backward"))

    def __repr__(self) -> str:
        return f"<symopt.nn.Activation {self.name!r}>"

    def latex(self) -> str:
        """LaTeX of f and f′ (in the output ``y = f(x)`` where that form was chosen)."""
        lat = self.spec["latex"]
        if "derivative" not in lat:
            return lat["definition"]
        where = r" \quad (y = f(x))" if self.spec.get("derivative_uses_output") else ""
        return f"f(x) = {lat['definition']}, \\qquad f'(x) = {lat['derivative']}{where}"

    def _shape2(self, a):
        if not self.rowwise:
            return a.reshape(-1)
        if a.ndim == 0:
            raise ValueError(f"{self.name}: needs at least one axis")
        return a.reshape(-1, a.shape[-1])

    def forward(self, x, out=None) -> np.ndarray:
        """``f(x)`` elementwise (row-wise for softmax)."""
        x = _as_float_array(x, "x")
        check_finite(x, "x")
        out = _out(out, x)
        return self._forward(x, out)

    __call__ = forward

    def backward(self, x, y, g, out=None) -> np.ndarray:
        """``g ⊙ f′(x)`` (softmax: ``Σ_k g_k ∂f_k/∂x_j``), with ``y = f(x)``."""
        x = _as_float_array(x, "x")
        y = _as_float_array(y, "y (the forward output)", x.dtype)
        g = _as_float_array(g, "g (the upstream gradient)", x.dtype)
        for arr, what in ((y, "y (the forward output)"), (g, "g (the upstream gradient)")):
            if arr.shape != x.shape:
                raise ValueError(f"{self.name}: {what} must have the shape of x {x.shape}, got {arr.shape}")
        for arr, what in ((x, "x"), (y, "y (the forward output)"), (g, "g (the upstream gradient)")):
            check_finite(arr, what)
        out = _out(out, x)
        return self._backward(x, y, g, out)

    def derivative(self, x) -> np.ndarray:
        """``f′(x)`` elementwise (not for softmax, whose derivative is a Jacobian)."""
        if self.rowwise:
            raise TypeError(f"{self.name} has a Jacobian, not an elementwise derivative; use backward(x, y, g)")
        y = self.forward(x)
        x = _as_float_array(x, "x")
        return self._backward(x, y, np.ones_like(x), np.empty_like(x))

    def _forward(self, x, out) -> np.ndarray:
        self._k.by_dtype[_DTYPES[x.dtype]]["forward"](self._shape2(x), self._shape2(out), *self.hyper)
        return out

    def _backward(self, x, y, g, out) -> np.ndarray:
        self._k.by_dtype[_DTYPES[x.dtype]]["backward"](self._shape2(x), self._shape2(y), self._shape2(g),
                                                       self._shape2(out), *self.hyper)
        return out


def _out(out, x):
    if out is None:
        return np.empty_like(x)
    if not isinstance(out, np.ndarray) or out.shape != x.shape or out.dtype != x.dtype \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writable C-contiguous {x.dtype} array of shape {x.shape}")
    return out


def loss(name: str, **hyper) -> Loss:
    """The generated loss ``name`` (``delta=`` for Huber)."""
    return Loss(name, **hyper)


def activation(name: str, **hyper) -> Activation:
    """The generated activation ``name`` (``negative_slope=`` for leaky ReLU)."""
    return Activation(name, **hyper)
