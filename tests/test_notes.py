"""The source notes' rules, to the letter.

Every ``notes.*`` rule runs 30 steps against the hand transcription of the notes'
formulas in ``tests/references/notes.py``, for each case of ``tests/rule_db.py``: with
the transcription's own constants (ε = 1e-9 inside the square root, β1 = 0.9,
β2 = 0.999, t from 1, so symopt's defaults are checked too; only the learning rate, which
the notes do not give, is passed to both) in both dtypes, and with other hyperparameters
in float64.  Gradients are fixed random arrays whose magnitudes span 1e-3..1,
so ε = 1e-9 is not negligible beside v (Adam's v_1 = 1e-3 g² reaches 1e-9).

Errors, all relative: params elementwise (they stay in ±[2, 3.5]); state and the
displacement θ_t − θ_0 in max norm (the displacement is ~100x smaller than θ, so
its error shows a wrong ε or β that the params' own rounding would hide).
Tolerances (the table's "peer" and "peer displacement"): float64 1e-10 (the issue's
bound) for all three.  float32: 2e-6 for params and state, 1e-4 for the displacement:
the float32 run starts from the same float32 values and is compared with the float64
transcription, so the error is float32 rounding accumulated over 30 steps (params
rounded to 2^-22 at |θ| ≈ 2.5 each step, against a displacement of ~0.1).
"""
import re

import numpy as np
import pytest
from conftest import rel_err
from rule_db import case_id, peer_cases

import symopt

STEPS = 30
SHAPES = [(4, 6), (7,)]
#: (rule info, case index, case) of the table's cases against the notes' transcription.
CASES = peer_cases("notes")
DTYPE_CASES = [(info, k, case, dtype) for info, k, case in CASES for dtype in case.dtypes]


def _data(seed, dtype):
    rng = np.random.default_rng(seed)
    params = [(rng.uniform(2.5, 3.0, s) * rng.choice([-1.0, 1.0], s)).astype(dtype) for s in SHAPES]
    grads = [[(rng.normal(size=s) * 10.0 ** rng.uniform(-3, 0, s)).astype(dtype) for s in SHAPES]
             for _ in range(STEPS)]
    return params, grads


def run_against_transcription(name, transcription, hyper, dtype, seed):
    """Max (param, state, displacement) errors of ``STEPS`` symopt steps against the transcription."""
    params, grads = _data(seed, dtype)
    ours = [p.copy() for p in params]
    theirs = [p.astype(np.float64) for p in params]
    opt = symopt.optimizer(name, ours, **hyper)
    state: dict = {}
    start = [p.astype(np.float64) for p in params]
    err_p = err_s = err_d = 0.0
    for t in range(1, STEPS + 1):
        opt.step(grads[t - 1])
        transcription(theirs, [g.astype(np.float64) for g in grads[t - 1]], state, t, **hyper)
        assert opt.state[0]["step"] == t
        for j in range(len(SHAPES)):
            assert ours[j].dtype == dtype
            err_p = max(err_p, rel_err(ours[j], theirs[j]))
            err_d = max(err_d, rel_err(ours[j] - start[j], theirs[j] - start[j], floor=1.0))
            for key, bufs in state.items():
                err_s = max(err_s, rel_err(opt.state[j][key], bufs[j], floor=1.0))
    moved = max(float(np.max(np.abs(p.astype(np.float64) - q))) for p, q in zip(ours, params))
    assert moved > 1e-2, f"{name}: params barely moved ({moved}); the comparison would be vacuous"
    return err_p, err_s, err_d


@pytest.mark.parametrize("info,k,case,dtype", DTYPE_CASES,
                         ids=[f"{case_id(i.name, c)}-{np.dtype(d).name}" for i, _, c, d in DTYPE_CASES])
def test_notes_rule_follows_the_formulas(info, k, case, dtype):
    err_p, err_s, err_d = run_against_transcription(info.name, case.build, case.kwargs, dtype, seed=k)
    print(f"{info.name} {case.kwargs} {np.dtype(dtype).name}: params {err_p:.3g}, state {err_s:.3g}, "
          f"displacement {err_d:.3g}")
    tol = info.tolerance
    assert err_p <= tol["peer"][dtype] and err_s <= tol["peer"][dtype], (err_p, err_s, err_d)
    assert err_d <= tol["peer displacement"][dtype], (err_p, err_s, err_d)


def test_notes_constants_are_the_notes():
    for name in ("notes.adam", "notes.adam_warmup"):
        d = symopt.optimizer(name, [np.zeros(2)]).defaults
        assert d["betas"] == (0.9, 0.999) and d["eps"] == 1e-9
    for name in ("notes.adagrad", "notes.rmsprop"):
        assert symopt.optimizer(name, [np.zeros(2)]).defaults["eps"] == 1e-9


def test_rmsprop_gamma_default_is_0_9_and_documented():
    opt = symopt.optimizer("notes.rmsprop", [np.zeros(3)])
    assert opt.defaults["gamma"] == 0.9
    fam = symopt.family("notes.rmsprop")
    (gamma,) = [h for s, h in fam.hyper.items() if (h.key or s.name) == "gamma"]
    assert gamma.default == 0.9 and "0.9" in gamma.doc
    assert "0.9" in fam.doc


def test_first_step_counts_t_from_1():
    # With t = 1, the warm-up gives m̂_1 = g and v̂_1 = g²: θ_1 = θ_0 − α g / √(g² + ε).
    g = np.array([3e-5, -0.2, 1.5])
    p = np.zeros(3)
    symopt.optimizer("notes.adam_warmup", [p], lr=0.1).step([g])
    np.testing.assert_allclose(p, -0.1 * g / np.sqrt(g**2 + 1e-9), rtol=1e-13)


def test_adam_latex_has_epsilon_inside_the_root():
    tex = symopt.rule("notes.adam").latex()
    # θ_t = θ_{t-1} − α m_t / √(v_t + ε): one fraction with the square root over v_t + ε.
    sqrt_v_eps = r"\\sqrt\{(v_\{t\} \+ \\epsilon|\\epsilon \+ v_\{t\})\}"
    assert re.search(r"\\theta_\{t\} &= .*\\frac\{\\alpha m_\{t\}\}\{" + sqrt_v_eps + r"\}", tex), tex
    assert r"\hat" not in tex  # the notes' Adam has no bias correction
    warm = symopt.rule("notes.adam_warmup").latex()
    assert re.search(r"\\sqrt\{(\\hat\{v\}_\{t\} \+ \\epsilon|\\epsilon \+ \\hat\{v\}_\{t\})\}", warm), warm
    assert r"\hat{m}_{t} &= \frac{m_{t}}{1 - \beta_{1}^{t}}" in warm
