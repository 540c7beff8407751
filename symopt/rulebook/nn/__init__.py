"""The math of ``symopt.nn``: losses and activations as plain SymPy data.

* :mod:`.spec` -- :class:`~.spec.Elementwise` and :class:`~.spec.Rowwise`, the data
  classes (textbook form, kernel form, hyperparameters, subgradient convention);
* :mod:`.losses` -- the losses (MSE, MAE, Huber, cross-entropies, hinge);
* :mod:`.activations` -- the activations (sigmoid, tanh, ReLU, GELU, softmax...).

Their derivatives come from :mod:`symopt.derive`; ``symopt generate`` writes their
kernels into ``generated/nn_*.py``, which the runtime package :mod:`symopt.nn`
calls without importing SymPy.
"""
