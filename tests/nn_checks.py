"""Helpers shared by the symopt.nn and symopt.gradient tests (not a test module)."""
import numpy as np

#: Relative tolerance of float64 gradients against torch autograd and finite differences.
GRAD_RTOL = 1e-10


def fd_grad(f, x, h: float = 1e-3) -> np.ndarray:
    """Central differences with one Richardson step (error O(h⁴)) of scalar f at x (float64)."""
    x = np.array(x, dtype=np.float64)
    g = np.empty_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]

        def at(d, i=i, old=old):
            flat[i] = old + d
            v = f(x)
            flat[i] = old
            return v

        d1 = (at(h) - at(-h)) / (2 * h)
        d2 = (at(h / 2) - at(-h / 2)) / h
        gf[i] = (4 * d2 - d1) / 3
    return g
