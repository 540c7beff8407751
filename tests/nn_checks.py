"""Helpers shared by the symopt.nn and symopt.gradient tests (not a test module)."""
import numpy as np

#: Relative tolerance of float64 gradients against torch autograd and finite differences.
GRAD_RTOL = 1e-10


def rel(a, b, floor: float = 1.0) -> float:
    """max |a − b| / max(|b|, floor·max|b|): relative to the larger entries, so that entries
    that are zero in exact arithmetic do not divide by ~0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(b))), 1e-300)
    denom = np.maximum(np.abs(b), floor * scale)
    return float(np.max(np.abs(a - b) / denom))


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
