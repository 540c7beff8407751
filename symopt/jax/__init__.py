"""symopt inside JAX: an ``optax.GradientTransformation`` generated from a symopt rule.

::

    import optax, symopt.jax
    tx = optax.chain(optax.clip_by_global_norm(1.0), symopt.jax.transform("adamw", lr=1e-3))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)      # inside jax.jit
    params = optax.apply_updates(params, updates)

The update runs the generated module ``generated/jax/<rule>.py`` (the same plan as the
Numba kernels, printed as ``jax.numpy``); see :func:`transform`.  This subpackage is the
only part of symopt that imports JAX (the ``optax`` extra pins jax, jaxlib and optax).
"""

try:
    import jax as _jax  # noqa: F401  (the real JAX: absolute import)
    import optax as _optax  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without JAX
    raise ImportError("symopt.jax needs JAX and Optax: pip install 'symopt[optax]'") from exc

from .transform import SymoptState, transform

__all__ = ["transform", "SymoptState"]
