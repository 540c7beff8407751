"""The source notes' rules, to the letter.

Every ``notes.*`` rule runs 30 steps against the hand transcription of the notes'
formulas in ``tests/references/notes.py`` (ε = 1e-9 inside the square root,
β1 = 0.9, β2 = 0.999, t from 1 -- the transcription's own constants, so symopt's
defaults are checked too; only the learning rate, which the notes do not give, is
passed to both).  Gradients are fixed random arrays whose magnitudes span 1e-3..1,
so ε = 1e-9 is not negligible beside v (Adam's v_1 = 1e-3 g² reaches 1e-9).

Errors, all relative: params elementwise (they stay in ±[2, 3.5]); state and the
displacement θ_t − θ_0 in max norm (the displacement is ~100x smaller than θ, so
its error shows a wrong ε or β that the params' own rounding would hide).
Tolerances: float64 1e-10 (the issue's bound) for all three.  float32: 2e-6 for
params and state, 1e-4 for the displacement: the float32 run starts from the same
float32 values and is compared with the float64 transcription, so the error is
float32 rounding accumulated over 30 steps (params rounded to 2^-22 at |θ| ≈ 2.5
each step, against a displacement of ~0.1).
"""
import re

import numpy as np
import pytest
from references import notes as ref

import symopt

STEPS = 30
RTOL = {np.float64: 1e-10, np.float32: 2e-6}
RTOL_DISP = {np.float64: 1e-10, np.float32: 1e-4}
SHAPES = [(4, 6), (7,)]
LR = {"notes.gd": 0.02, "notes.sgd": 0.02, "notes.adagrad": 0.02, "notes.rmsprop": 0.02,
      "notes.adam": 0.005, "notes.adam_warmup": 0.005}
NOTES_RULES = ["notes.gd", "notes.sgd", "notes.adagrad", "notes.rmsprop", "notes.adam", "notes.adam_warmup"]


def _data(seed, dtype):
    rng = np.random.default_rng(seed)
    params = [(rng.uniform(2.5, 3.0, s) * rng.choice([-1.0, 1.0], s)).astype(dtype) for s in SHAPES]
    grads = [[(rng.normal(size=s) * 10.0 ** rng.uniform(-3, 0, s)).astype(dtype) for s in SHAPES]
             for _ in range(STEPS)]
    return params, grads


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _rel_norm(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def run_against_transcription(name, dtype, seed=0, **hyper):
    """Max (param, state, displacement) errors of ``STEPS`` symopt steps against the transcription."""
    params, grads = _data(seed, dtype)
    ours = [p.copy() for p in params]
    theirs = [p.astype(np.float64) for p in params]
    opt = symopt.optimizer(name, ours, lr=LR[name], **hyper)
    state: dict = {}
    start = [p.astype(np.float64) for p in params]
    err_p = err_s = err_d = 0.0
    for t in range(1, STEPS + 1):
        opt.step(grads[t - 1])
        ref.REFERENCES[name](theirs, [g.astype(np.float64) for g in grads[t - 1]], state, t,
                             lr=LR[name], **hyper)
        assert opt.state[0]["step"] == t
        for j in range(len(SHAPES)):
            assert ours[j].dtype == dtype
            err_p = max(err_p, _rel(ours[j], theirs[j]))
            err_d = max(err_d, _rel_norm(ours[j] - start[j], theirs[j] - start[j]))
            for key, bufs in state.items():
                err_s = max(err_s, _rel_norm(opt.state[j][key], bufs[j]))
    moved = max(float(np.max(np.abs(p.astype(np.float64) - q))) for p, q in zip(ours, params))
    assert moved > 1e-2, f"{name}: params barely moved ({moved}); the comparison would be vacuous"
    return err_p, err_s, err_d


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", NOTES_RULES)
def test_notes_rule_follows_the_formulas(name, dtype):
    err_p, err_s, err_d = run_against_transcription(name, dtype)
    print(f"{name} {np.dtype(dtype).name}: params {err_p:.3g}, state {err_s:.3g}, displacement {err_d:.3g}")
    assert err_p <= RTOL[dtype] and err_s <= RTOL[dtype] and err_d <= RTOL_DISP[dtype], (err_p, err_s, err_d)


@pytest.mark.parametrize("name", NOTES_RULES)
def test_notes_rule_with_other_hyperparameters_f64(name):
    hyper = {k: v for k, v in ref.CASES[name][0].items() if k != "lr"}
    errs = run_against_transcription(name, np.float64, seed=1, **hyper)
    assert max(errs) <= RTOL[np.float64], errs


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
