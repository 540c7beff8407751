"""Kronecker-factored rules (``shampoo``): pytorch-optimizer 4.1.0's trajectories in float64, the
mpmath check, the state names, the LaTeX, and bad input.

Tolerance: 1e-9 relative (params elementwise over a 30-step trajectory, matrix states max-norm),
set by the eigensolvers: symopt roots the statistics by LAPACK's symmetric eigendecomposition,
pytorch-optimizer by an SVD; on these 2-D params the statistics' condition numbers reach ~1e7
(ε = 1e-6 against ‖L‖ ≈ 30), which turns rounding of ~1e-16 into ~1e-10 of an inverse root.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
from conftest import rel_err
from rule_db import RULE_DB, case_id, peer_cases

import symopt
from symopt.rulebook.metadata import RuleError

CASES = peer_cases("pytorch-optimizer", group="matrix")
SHAPES = [(5, 4), (3, 7)]
STEPS = 30
MATRIX_KEYS = ("pre_cond_0", "inv_pre_cond_0", "pre_cond_1", "inv_pre_cond_1")


@pytest.fixture(scope="module")
def libs():
    torch = pytest.importorskip("torch")
    po = pytest.importorskip("pytorch_optimizer")
    return types.SimpleNamespace(torch=torch, po=po)


@pytest.mark.parametrize("info, k, case", CASES, ids=[case_id(i.name, c) for i, _, c in CASES])
def test_trajectory_equals_pytorch_optimizer(libs, info, k, case):
    torch = libs.torch
    rng = np.random.default_rng(k)
    params = [rng.standard_normal(s) for s in SHAPES]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    opt = symopt.optimizer(info.name, params, **case.kwargs)
    peer = case.build(libs, tparams)
    tol = info.tolerance["peer"][np.float64]
    for step in range(STEPS):
        grads = [rng.standard_normal(s) for s in SHAPES]
        opt.step([g.copy() for g in grads])
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g.copy())
        peer.step()
        for j, tp in enumerate(tparams):
            assert rel_err(params[j], tp.detach()) < tol, (step, j)
    for j, tp in enumerate(tparams):
        ours, theirs = opt.state[j], peer.state[tp]
        for key in (*MATRIX_KEYS, "momentum_buffer"):
            assert ours[key].shape == tuple(theirs[key].shape), key
            assert rel_err(ours[key], theirs[key], floor=1.0) < tol, (j, key)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_verify_against_mpmath(dtype):
    from symopt.verify.check import verify

    (result,) = verify(["shampoo"], dtypes=(dtype,), steps=2)
    assert result.tolerance == RULE_DB["shampoo"].tolerance["verify"][np.dtype(dtype).type]
    assert result.max_error < result.tolerance, result.worst


def test_latex_writes_the_kronecker_factors():
    text = symopt.rule("shampoo").latex()
    for part in (r"L_{t} &= G G^{T} + L_{t-1}", r"R_{t} &= R_{t-1} + G^{T} G", r"L_{t}^{-1/4}", r"R_{t}^{-1/4}",
                 r"M_{t} &= H_{L, t} G H_{R, t}"):
        assert part in text, part


def test_matrix_states_start_at_eps_identity_and_stay_symmetric():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3))
    opt = symopt.optimizer("shampoo", [w], matrix_eps=0.5, preconditioning_compute_steps=2)
    g = rng.standard_normal((4, 3))
    opt.step([g])
    st = opt.state[0]
    np.testing.assert_allclose(st["pre_cond_0"], 0.5 * np.eye(4) + g @ g.T, rtol=1e-12)
    np.testing.assert_allclose(st["pre_cond_1"], 0.5 * np.eye(3) + g.T @ g, rtol=1e-12)
    assert not st["inv_pre_cond_0"].any()       # t = 1 is not a multiple of 2: the roots stay 0
    np.testing.assert_array_equal(w, w)          # and so does the update
    opt.step([g])
    lam, v = np.linalg.eigh(st["pre_cond_0"])
    np.testing.assert_allclose(st["inv_pre_cond_0"], (v * lam ** -0.25) @ v.T, rtol=1e-10)
    assert np.array_equal(st["inv_pre_cond_0"], st["inv_pre_cond_0"].T)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 2-D"):
        symopt.optimizer("shampoo", [np.zeros(3)])
    with pytest.raises(ValueError, match="integer"):
        symopt.optimizer("shampoo", [np.zeros((2, 2))], preconditioning_compute_steps=1.5)
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="no torch module"):
        symopt.torch.Optimizer("shampoo", [torch.zeros(2, 2, requires_grad=True)], backend="torch")


def test_malformed_preconditioner_is_a_rule_error():
    import sympy as sp

    from symopt.rulebook.matrix import cols, rows
    from symopt.rulebook.preconditioned import InverseRoot, MatrixState, Preconditioned

    G = sp.MatrixSymbol("G", rows, cols)
    L = sp.MatrixSymbol("L", rows, rows)
    with pytest.raises(RuleError, match="c \\* Identity or ZeroMatrix"):
        MatrixState(L, L, L + G * G.T, key="a").init_diagonal()
    with pytest.raises(RuleError, match="square MatrixSymbol"):
        InverseRoot(G, 4)
    with pytest.raises(RuleError, match="shape \\(rows, cols\\)"):
        Preconditioned(L, 1, [MatrixState(L, sp.Identity(rows), L + G * G.T, key="a")], L * G)


def test_checkpoints_keep_the_matrix_states(tmp_path, libs):
    """.npz (symopt.save/load) and torch-format (state_dict through torch.save) checkpoints resume
    the same trajectory; the torch-format state has pytorch-optimizer's names and shapes."""
    import io

    torch = libs.torch
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal((5, 4)) for _ in range(6)]
    w = rng.standard_normal((5, 4))
    a = symopt.optimizer("shampoo", [w], momentum=0.5, preconditioning_compute_steps=2)
    for g in grads[:3]:
        a.step([g.copy()])
    a.save(tmp_path / "ck.npz")
    w2 = w.copy()
    b = symopt.optimizer("shampoo", [w2], momentum=0.5, preconditioning_compute_steps=2)
    b.load(tmp_path / "ck.npz")

    tw = torch.tensor(w.copy(), requires_grad=True)
    tw_ref = torch.tensor(w.copy(), requires_grad=True)
    topt = symopt.torch.Optimizer("shampoo", [tw], momentum=0.5, preconditioning_compute_steps=2)
    topt.load_state_dict({"state": {0: {"step": torch.tensor(3.0),
                                        **{k: torch.tensor(v) for k, v in a.state[0].items() if k != "step"}}},
                          "param_groups": [{**topt.param_groups[0], "params": [0]}]})
    buf = io.BytesIO()
    torch.save(topt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf)
    assert {k: tuple(v.shape) for k, v in saved["state"][0].items()} == {
        "step": (), "momentum_buffer": (5, 4), "pre_cond_0": (5, 5), "inv_pre_cond_0": (5, 5),
        "pre_cond_1": (4, 4), "inv_pre_cond_1": (4, 4)}
    topt2 = symopt.torch.Optimizer("shampoo", [tw_ref], momentum=0.5, preconditioning_compute_steps=2)
    topt2.load_state_dict(saved)
    for g in grads[3:]:
        a.step([g.copy()])
        b.step([g.copy()])
        tw_ref.grad = torch.tensor(g.copy())
        topt2.step()
    np.testing.assert_array_equal(w2, w)
    np.testing.assert_allclose(tw_ref.detach().numpy(), w, rtol=1e-14, atol=0)
    bad = dict(saved["state"][0], pre_cond_0=torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"'pre_cond_0' of param 0 has shape \(4, 4\), expected \(5, 5\)"):
        topt2.load_state_dict({"state": {0: bad}, "param_groups": saved["param_groups"]})


def test_report_page_shows_the_plan_and_passes_verification():
    from symopt.reporting import report

    page = report("shampoo")
    assert page.startswith("<!DOCTYPE html>") and "<math" in page and "<svg" in page
    assert "_inverse_root" in page and "syevd" in page      # the generated root, shown as checked in
    assert "FAIL" not in page


@pytest.mark.parametrize("side", ["rows", "cols"])
def test_user_rule_with_one_sided_preconditioner(side):
    """A user's one-sided rule (an EMA statistic, its inverse square root on one side of G) against
    a NumPy transcription in float64; the left and the right product take different BLAS calls."""
    import sympy as sp

    from symopt.rulebook.matrix import cols, rows
    from symopt.rulebook.preconditioned import InverseRoot, MatrixState, Preconditioned

    w, g, P = sp.symbols("w g P")
    lr, eps = sp.symbols("lr eps")
    G = sp.MatrixSymbol("G", rows, cols)
    n = rows if side == "rows" else cols
    S, H = sp.MatrixSymbol("S", n, n), sp.MatrixSymbol("H", n, n)
    gram = G * G.T if side == "rows" else G.T * G
    node = Preconditioned(G, 2 * g, [MatrixState(S, eps * sp.Identity(n), 0.9 * S + 0.1 * gram, key="stat"),
                                     MatrixState(H, sp.ZeroMatrix(n, n), InverseRoot(S, 2), key="root")],
                          H * G if side == "rows" else G * H)
    rule = symopt.Rule(f"one_sided_{side}", param=w, grad=g, hyper={lr: 0.01, eps: 1e-3},
                       updates=[(P, node), (w, w - lr * P)])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3))
    ref = x.copy()
    k = 6 if side == "rows" else 3
    s = 1e-3 * np.eye(k)
    opt = symopt.optimizer(rule, [x])
    for _ in range(5):
        g = rng.standard_normal((6, 3))
        opt.step([g])
        u = 2 * g
        s = 0.9 * s + 0.1 * (u @ u.T if side == "rows" else u.T @ u)
        lam, v = np.linalg.eigh(s)
        h = (v / np.sqrt(lam)) @ v.T
        ref -= 0.01 * (h @ u if side == "rows" else u @ h)
    assert rel_err(x, ref) < 1e-12
    assert rel_err(opt.state[0]["stat"], s, floor=1.0) < 1e-14
