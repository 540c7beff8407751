"""Train a small network entirely inside one ``@numba.njit`` function, with Adam's generated
element update fused into the loop.

    python examples/numba_loop.py [STEPS]          # default: 2000

The model: a 2-16-1 tanh MLP fitting ``y = sin(2 x0) cos(x1)`` on 256 points, full batch, its
81 weights in one flat float64 array ``w`` (forward and backward written by hand below).
``symopt.kernel("adam", "float64", lr=...)`` gives Adam's generated functions:

* ``k.element(w_i, g_i, m_i, v_i, s0, ..., s9) -> (w_i, m_i, v_i)``: one element's update,
  inlined into ``train_fused``'s loop (``@numba.njit(inline="always")``);
* ``k.scalars(t)``: step t's ten per-step scalars (bias corrections, lr...), computed here
  once for every step before the compiled loop runs.

``train_per_step`` runs the same loop with one ``symopt.optimizer`` step from Python per
iteration; both take the same arithmetic in the same order, so the weights come out
bit-identical (checked below).  ``benchmarks/bench_numba_loop.py`` times the two.
"""
import sys

import numba
import numpy as np

import symopt

HIDDEN = 16
LR = 1e-2
ADAM = symopt.kernel("adam", "float64", lr=LR)
adam_element = ADAM.element          # a global of the njit functions below: inlined into them


def make_problem(n: int = 256, seed: int = 0):
    """Inputs X (n, 2), targets y (n,), and initial weights w (81,)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.5, 1.5, (n, 2))
    y = np.sin(2 * X[:, 0]) * np.cos(X[:, 1])
    w = np.concatenate([rng.normal(0, 0.7, 2 * HIDDEN), np.zeros(HIDDEN), rng.normal(0, 0.3, HIDDEN), [0.0]])
    return X, y, w


@numba.njit(error_model="numpy")
def loss_and_grad(w, X, y, g):
    """Mean squared error of the MLP with weights ``w``; its gradient is written into ``g``.

    w = [W1 (HIDDEN x 2, row-major), b1 (HIDDEN), W2 (HIDDEN), b2].
    """
    H = HIDDEN
    n = X.shape[0]
    g[:] = 0.0
    loss = 0.0
    h = np.empty(H)
    for r in range(n):
        out = w[4 * H]
        for j in range(H):
            h[j] = np.tanh(w[2 * j] * X[r, 0] + w[2 * j + 1] * X[r, 1] + w[2 * H + j])
            out += w[3 * H + j] * h[j]
        err = out - y[r]
        loss += err * err
        d = 2.0 * err / n
        g[4 * H] += d
        for j in range(H):
            g[3 * H + j] += d * h[j]
            dz = d * w[3 * H + j] * (1.0 - h[j] * h[j])
            g[2 * j] += dz * X[r, 0]
            g[2 * j + 1] += dz * X[r, 1]
            g[2 * H + j] += dz
    return loss / n


@numba.njit(error_model="numpy")
def train_fused(w, m, v, X, y, S):
    """Every step in one compiled call: gradient, then Adam on each weight.

    ``S[t - 1]``: the per-step scalars of step t (``ADAM.scalars(t)``).  Returns the losses.
    """
    g = np.empty_like(w)
    losses = np.empty(S.shape[0])
    for t in range(S.shape[0]):
        losses[t] = loss_and_grad(w, X, y, g)
        s = S[t]
        for i in range(w.size):
            w[i], m[i], v[i] = adam_element(w[i], g[i], m[i], v[i],
                                            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9])
    return losses


def scalar_table(steps: int) -> np.ndarray:
    """The per-step scalars of steps 1..steps, one row each."""
    return np.array([ADAM.scalars(t) for t in range(1, steps + 1)])


def train_per_step(w, X, y, steps: int):
    """The same loop with one ``symopt.optimizer`` call from Python per step."""
    opt = symopt.optimizer("adam", [w], lr=LR)
    g = np.empty_like(w)
    losses = np.empty(steps)
    for t in range(steps):
        losses[t] = loss_and_grad(w, X, y, g)
        opt.step([g])
    return losses, opt


def main(steps: int = 2000) -> float:
    X, y, w0 = make_problem()
    w = w0.copy()
    m, v = ADAM.init_state(w)
    losses = train_fused(w, m, v, X, y, scalar_table(steps))
    print(f"fused loop: loss {losses[0]:.4f} -> {losses[-1]:.6f} after {steps} Adam steps")
    print("the element function:", adam_element.__doc__.splitlines()[0])

    w_ref = w0.copy()
    ref_losses, opt = train_per_step(w_ref, X, y, steps)
    same = np.array_equal(w, w_ref) and np.array_equal(m, opt.state[0]["exp_avg"])
    print(f"per-step symopt.optimizer: loss {ref_losses[-1]:.6f}; weights bit-identical: {same}")
    if not same:
        raise SystemExit("the fused loop and the optimizer disagree")
    return float(losses[-1])


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
