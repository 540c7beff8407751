"""Dense layers: ``a = h W + b`` and its chain rule, in NumPy (BLAS matrix products).

For a batch ``h`` of shape ``(n, fan_in)``, ``W`` of shape ``(fan_in, fan_out)`` and
``b`` of shape ``(fan_out,)``, with ``δ = ∂L/∂a`` of shape ``(n, fan_out)``:

* ``∂L/∂W = hᵀ δ``, ``∂L/∂b = Σ_rows δ``;
* ``∂L/∂h = δ Wᵀ``, which the previous layer multiplies elementwise by its
  activation's derivative (the notes' "gradient of a layer multiplied by that
  layer's weights and passed to the previous layer").

Initialisation (uniform, zero biases): Glorot/Xavier ``U(±√(6/(fan_in+fan_out)))``
for tanh, sigmoid, softplus, GELU and softmax layers; He ``U(±√(6/fan_in))`` for
ReLU and leaky ReLU.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Dense", "init_scale"]

_HE = {"relu", "leaky_relu"}


def init_scale(fan_in: int, fan_out: int, activation: str | None) -> float:
    """Half-width of the uniform initialisation for a layer feeding ``activation``."""
    if activation in _HE:
        return float(np.sqrt(6.0 / fan_in))
    return float(np.sqrt(6.0 / (fan_in + fan_out)))


class Dense:
    """One affine layer ``a = h W + b`` (``W``: ``(fan_in, fan_out)``, C-contiguous)."""

    def __init__(self, fan_in: int, fan_out: int, *, dtype=np.float64, rng=None, activation: str | None = None):
        for what, v in (("fan_in", fan_in), ("fan_out", fan_out)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Dense: {what} must be a positive integer, got {v!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"Dense: dtype must be float32 or float64, got {dtype}")
        rng = np.random.default_rng(rng)
        a = init_scale(int(fan_in), int(fan_out), activation)
        self.W = np.ascontiguousarray(rng.uniform(-a, a, size=(int(fan_in), int(fan_out))).astype(dtype))
        self.b = np.zeros(int(fan_out), dtype=dtype)

    @property
    def params(self) -> list:
        return [self.W, self.b]

    def forward(self, h: np.ndarray) -> np.ndarray:
        """``h W + b``."""
        a = h @ self.W
        a += self.b
        return a

    def backward(self, h: np.ndarray, delta: np.ndarray, need_input_grad: bool = True):
        """``(∂L/∂W, ∂L/∂b, ∂L/∂h)`` for ``δ = ∂L/∂a`` (the last is None unless asked)."""
        dW = h.T @ delta
        db = delta.sum(axis=0)
        dh = delta @ self.W.T if need_input_grad else None
        return np.ascontiguousarray(dW), db, dh
