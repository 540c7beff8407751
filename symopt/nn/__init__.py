"""symopt.nn: losses, activations and networks whose gradients come from SymPy.

Runtime (no SymPy import)::

    symopt.nn.loss("softmax_cross_entropy").value_and_grad(logits, labels)
    symopt.nn.activation("tanh").forward(x) / .backward(x, y, g)
    net = symopt.nn.MLP([64, 32, 10], activation="tanh", loss="softmax_cross_entropy")
    loss, grads = net.loss_and_grads(X, y)
    symopt.nn.load_digits()          # scikit-learn's bundled 8x8 digits, split and scaled

This package is runtime only.  The math (SymPy definitions of the losses and
activations) is :mod:`symopt.rulebook.nn`; ``symopt generate`` writes their kernels
into ``generated/nn_*.py``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Loss": "functional", "Activation": "functional", "loss": "functional", "activation": "functional",
    "loss_names": "functional", "activation_names": "functional",
    "Dense": "layers", "MLP": "mlp", "load_digits": "data", "train_model": "train", "History": "train",
}
_SUBMODULES = {"functional", "layers", "mlp", "data", "train"}

__all__ = [  # noqa: RUF022 - names, then submodules
    "Activation", "Dense", "History", "Loss", "MLP", "activation", "activation_names", "load_digits", "loss",
    "loss_names", "train_model",
    "data", "functional", "layers", "mlp", "train",
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
