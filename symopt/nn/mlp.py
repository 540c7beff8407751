"""A multilayer perceptron trained by backpropagation, as in the notes.

Forward: ``a_l = h_{l-1} W_l + b_l`` and ``h_l = f(a_l)`` for the hidden layers;
the last layer's ``a_L`` is the output (logits for the cross-entropies) and goes
to the loss.  Backward, layer by layer by the chain rule:

* ``δ_L = ∂L/∂a_L`` from the loss kernel (already divided by the batch: the loss
  is the batch mean);
* ``∂L/∂W_l = h_{l-1}ᵀ δ_l``, ``∂L/∂b_l = Σ_rows δ_l``;
* ``δ_{l-1} = (δ_l W_lᵀ) ⊙ f′(a_{l-1})``, the activation's generated backward
  kernel (softmax hidden layers use its vector-Jacobian product).

Matrix products are NumPy's (BLAS); the loss, its gradient, every activation and
its derivative are the generated kernels of ``symopt.nn``.  No SymPy at run time.

>>> import numpy as np, symopt
>>> net = symopt.nn.MLP([64, 32, 10], activation="tanh", loss="softmax_cross_entropy", seed=0)
>>> X, y = np.random.default_rng(0).random((8, 64)), np.arange(8)
>>> loss, grads = net.loss_and_grads(X, y)
>>> opt = symopt.optimizer("adam", net.params, lr=1e-3); opt.step(grads)
"""

from __future__ import annotations

import numpy as np

from .functional import Activation, Loss, _as_float_array, check_finite
from .layers import Dense

__all__ = ["MLP"]


class MLP:
    """Dense layers of widths ``sizes`` (input, hidden…, output) with one hidden activation.

    ``params`` is ``[W1, b1, W2, b2, …]`` with ``W`` of shape ``(fan_in, fan_out)``;
    the optimizer updates these arrays in place.  ``activation`` and ``loss`` are
    names (see :func:`symopt.nn.activation_names`, :func:`symopt.nn.loss_names`)
    or :class:`Activation`/:class:`Loss` objects; ``dtype`` float32 or float64;
    ``seed`` fixes the initialisation (see :mod:`symopt.nn.layers`).
    """

    def __init__(self, sizes, activation="tanh", loss="softmax_cross_entropy", *, dtype=np.float64, seed=0):
        try:
            sizes = [s for s in sizes]
        except TypeError:
            raise TypeError(f"sizes must be a list of layer widths, got {type(sizes).__name__}") from None
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least an input and an output width, got {sizes!r}")
        for i, s in enumerate(sizes):
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
                raise ValueError(f"sizes[{i}] must be a positive integer, got {s!r}")
        self.sizes = [int(s) for s in sizes]
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.dtype = dtype
        self.activation = activation if isinstance(activation, Activation) else Activation(activation)
        self.loss_fn = loss if isinstance(loss, Loss) else Loss(loss)
        rng = np.random.default_rng(seed)
        self.layers = [Dense(a, b, dtype=dtype, rng=rng, activation=self.activation.name)
                       for a, b in zip(self.sizes[:-1], self.sizes[1:])]
        self.params = [p for layer in self.layers for p in layer.params]

    def __repr__(self) -> str:
        return (f"<symopt.nn.MLP {self.sizes} {self.activation.name}, loss {self.loss_fn.name}, "
                f"{self.dtype.name}>")

    @property
    def n_params(self) -> int:
        return int(sum(p.size for p in self.params))

    # ------------------------------------------------------------------ checks
    def _check_X(self, X) -> np.ndarray:
        X = _as_float_array(X, "X", self.dtype)
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(f"X must have shape (batch, {self.sizes[0]}), got {X.shape}")
        if X.shape[0] == 0:
            raise ValueError("X is an empty batch")
        check_finite(X, "X")
        return X

    def _check_y(self, y, n: int):
        shape = (n, self.sizes[-1])
        if not self.loss_fn.rowwise and self.sizes[-1] == 1 and np.ndim(y) == 1:
            y = np.asarray(y).reshape(n, 1) if np.size(y) == n else y
        return self.loss_fn.check_target(y, shape, self.dtype)

    # ------------------------------------------------------------------ passes
    def _forward(self, X, keep: bool):
        hs, pres = [X], []
        h = X
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            a = layer.forward(h)
            if i == last:
                return a, hs, pres
            h = self.activation._forward(a, np.empty_like(a))
            if keep:
                pres.append(a)
                hs.append(h)
        raise AssertionError("unreachable")  # pragma: no cover

    def forward(self, X) -> np.ndarray:
        """The network's output for a batch ``X`` of shape ``(batch, sizes[0])`` (logits, no output activation)."""
        out, _, _ = self._forward(self._check_X(X), keep=False)
        return out

    __call__ = forward

    def loss(self, X, y) -> float:
        """Mean loss over the batch."""
        X = self._check_X(X)
        y = self._check_y(y, X.shape[0])
        out, _, _ = self._forward(X, keep=False)
        return self.loss_fn._value(out, y)

    def loss_and_grads(self, X, y):
        """``(mean loss, [∂L/∂W1, ∂L/∂b1, …])``, the gradients aligned with :attr:`params`.

        ``y``: integer labels of shape ``(batch,)`` for ``softmax_cross_entropy``,
        otherwise targets of the output's shape ``(batch, sizes[-1])``.
        """
        X = self._check_X(X)
        y = self._check_y(y, X.shape[0])
        out, hs, pres = self._forward(X, keep=True)
        value, delta = self.loss_fn._value_and_grad(out, y)
        grads: list = [None] * len(self.params)
        for i in range(len(self.layers) - 1, -1, -1):
            dW, db, dh = self.layers[i].backward(hs[i], delta, need_input_grad=i > 0)
            grads[2 * i], grads[2 * i + 1] = dW, db
            if i > 0:
                # δ_{i-1} = (δ_i W_iᵀ) ⊙ f′(a_{i-1}); the kernel may write over its upstream input.
                delta = self.activation._backward(pres[i - 1], hs[i], dh, dh)
        return value, grads

    # ------------------------------------------------------------------ classification
    def predict(self, X) -> np.ndarray:
        """Class labels: argmax of the output, or for one output its sign (hinge) / ``z > 0`` (others)."""
        out = self.forward(X)
        if out.shape[1] == 1:
            pos = out[:, 0] > 0
            return np.where(pos, 1, -1) if self.loss_fn.spec["target_kind"] == "sign" else pos.astype(np.int64)
        return np.argmax(out, axis=1)

    def accuracy(self, X, labels) -> float:
        """Fraction of ``X`` whose predicted label equals ``labels`` (integer labels, or one-hot rows)."""
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[1] > 1:
            labels = np.argmax(labels, axis=1)
        labels = labels.reshape(-1)
        pred = self.predict(X)
        if labels.shape != pred.shape:
            raise ValueError(f"labels must have shape {pred.shape}, got {labels.shape}")
        return float(np.mean(pred == labels))
