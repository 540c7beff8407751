"""Kronecker-factored rules (``shampoo``, ``soap``): pytorch-optimizer 4.1.0's trajectories in
float64 on 0-D to 4-D params (every axis preconditioned), the mpmath check, the state names, the
LaTeX, and bad input.

Shampoo's tolerance: 1e-9 relative (params elementwise over a 30-step trajectory, matrix states
max-norm), set by the eigensolvers: symopt roots the statistics by LAPACK's symmetric
eigendecomposition, pytorch-optimizer by an SVD; the statistics' condition numbers reach ~1e7
(ε = 1e-6 against ‖L‖ ≈ 30), which turns rounding of ~1e-16 into ~1e-10 of an inverse root.

SOAP's tolerances (tests/rule_db.py): until the first power-iteration refresh of the eigenbases
the trajectories agree to rounding (1e-12, params max-norm); from then on pytorch-optimizer runs
that QR in float32 even for float64 params (its Q is orthonormal to ~6e-8), and symopt in the
param's dtype, so they part by ~1e-7 of the params' scale: 1e-6, params max-norm (an element near
zero keeps only its absolute error).  The params' statistics are full rank: no axis longer than
the product of the others (a 2-D param square), since the first statistic G_(k) G_(k)ᵀ of a
longer axis is rank-deficient and the eigenvectors of its null space are arbitrary (LAPACK builds
differ), so the trajectories would differ by more than rounding.  For the same reason a 1-D param
under ``precondition_1d=True`` (its statistic g gᵀ has rank 1) is compared with the same param
read as a ``d × 1`` matrix, not with pytorch-optimizer.
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
SHAMPOO_CASES = [c for c in CASES if c[0].name == "shampoo"]
SOAP_CASES = [c for c in CASES if c[0].name == "soap"]
# A 1-D param is full-matrix AdaGrad (one d × d statistic, root −1/2).  Under the maximize case below
# (momentum lerps the negated gradient toward the last preconditioned one) one direction of a vector's
# statistic keeps growing: at d ≥ 3 its condition number reaches ~1e9 within 30 steps and the SVD and
# the eigensolver part by more than 1e-9 (at d = 4 the trajectories diverge); at d = 2 it stays ≤ 1e3.
SHAPES = [(5, 4), (3, 7), (2,), (3, 4, 5), (2, 3, 2, 3), ()]
STEPS = 30


@pytest.fixture(scope="module")
def libs():
    torch = pytest.importorskip("torch")
    po = pytest.importorskip("pytorch_optimizer")
    return types.SimpleNamespace(torch=torch, po=po)


@pytest.mark.parametrize("info, k, case", SHAMPOO_CASES, ids=[case_id(i.name, c) for i, _, c in SHAMPOO_CASES])
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
        keys = [f"{name}_{k}" for k in range(tp.dim()) for name in ("pre_cond", "inv_pre_cond")]
        assert sorted(ours) == sorted(["step", "momentum_buffer", *keys])
        assert sorted(theirs) == sorted(["momentum_buffer", *keys])
        for key in (*keys, "momentum_buffer"):
            assert ours[key].shape == tuple(theirs[key].shape), key
            assert rel_err(ours[key], theirs[key], floor=1.0) < tol, (j, key)


SOAP_SHAPES = [(6, 6), (4, 4), (5,), (3, 3, 3), (5, 2, 3), (2, 3, 2, 3), ()]
SOAP_STEPS = 25


@pytest.mark.parametrize("info, k, case", SOAP_CASES, ids=[case_id(i.name, c) for i, _, c in SOAP_CASES])
def test_soap_trajectory_equals_pytorch_optimizer(libs, info, k, case):
    """Params after every step, then the moments, statistics and eigenbases (up to the signs of the
    eigenvectors, which both leave free) under pytorch-optimizer's names."""
    torch = libs.torch
    rng = np.random.default_rng(k)
    params = [rng.standard_normal(s) for s in SOAP_SHAPES]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    opt = symopt.optimizer(info.name, params, **case.kwargs)
    peer = case.build(libs, tparams)
    frequency = case.kwargs.get("precondition_frequency", 10)
    for step in range(1, SOAP_STEPS + 1):
        grads = [rng.standard_normal(s) for s in SOAP_SHAPES]
        opt.step([g.copy() for g in grads])
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g.copy())
        peer.step()
        # the first power-iteration refresh ends step frequency + 1; its basis is used from the next
        tol = info.tolerance["peer exact" if step <= frequency + 1 else "peer"][np.float64]
        for j, tp in enumerate(tparams):
            assert rel_err(params[j], tp.detach(), floor=1.0) < tol, (step, j)
    tol = info.tolerance["peer"][np.float64]
    for j, tp in enumerate(tparams):
        ours, theirs = opt.state[j], peer.state[tp]
        for key in ("exp_avg", "exp_avg_sq"):
            assert rel_err(ours[key], theirs[key], floor=1.0) < tol, (j, key)
        assert len(theirs["GG"]) == tp.dim()
        for axis, (gg, tq) in enumerate(zip(theirs["GG"], theirs["Q"])):
            if len(gg) == 0:    # an axis pytorch-optimizer leaves as it is keeps no state here either
                assert f"GG_{axis}" not in ours and f"Q_{axis}" not in ours, (j, axis)
                continue
            assert rel_err(ours[f"GG_{axis}"], gg, floor=1.0) < tol, (j, axis)
            q, tq = ours[f"Q_{axis}"], tq.numpy()
            assert rel_err(q * np.sign(np.sum(q * tq, axis=0)), tq, floor=1.0) < tol, (j, axis)


def test_soap_first_step_collects_statistics_only():
    """At t = 1 SOAP leaves the param and the moments alone, sets GG = (1 − β_s) G Gᵀ and Q to its
    eigenvectors by descending eigenvalue; the second step moves the param."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 4))
    w0 = w.copy()
    opt = symopt.optimizer("soap", [w], shampoo_beta=0.5)
    g = rng.standard_normal((4, 4))
    opt.step([g])
    st = opt.state[0]
    np.testing.assert_array_equal(w, w0)
    assert not st["exp_avg"].any() and not st["exp_avg_sq"].any()
    np.testing.assert_allclose(st["GG_0"], 0.5 * g @ g.T, rtol=1e-14)
    lam = np.linalg.eigvalsh(st["GG_0"])[::-1]
    np.testing.assert_allclose(np.diag(st["Q_0"].T @ st["GG_0"] @ st["Q_0"]), lam, rtol=1e-12)
    np.testing.assert_allclose(st["Q_0"].T @ st["Q_0"], np.eye(4), atol=1e-14)
    opt.step([g])
    assert not np.array_equal(w, w0)


def test_soap_refuses_what_it_does_not_do():
    with pytest.raises(ValueError, match="integer"):
        symopt.optimizer("soap", [np.zeros((3, 3))], precondition_frequency=2.5)
    # which axes are rotated is fixed when the optimizer is built (the state's shapes follow it)
    w = np.ones((4, 3))
    opt = symopt.optimizer("soap", [w], max_precondition_dim=3)
    assert sorted(opt.state[0]) == ["GG_1", "Q_1", "exp_avg", "exp_avg_sq", "step"]
    opt.param_groups[0]["max_precondition_dim"] = 4
    with pytest.raises(ValueError, match="change which axes keep matrix states"):
        opt.step([np.ones((4, 3))])
    assert np.array_equal(w, np.ones((4, 3))) and not opt.state[0]["GG_1"].any() and opt.step_counts[0] == 0


def test_soap_precondition_1d_rotates_a_vector_as_a_column():
    """precondition_1d=True: a 1-D param keeps one statistic and basis (d × d), and steps exactly as
    the same values read as a d × 1 matrix (whose second axis has the 1 × 1 basis 1); without it the
    vector keeps none and SOAP is Adam from the second step (checked against pytorch-optimizer above)."""
    rng = np.random.default_rng(7)
    v = rng.standard_normal(5)
    col = v.reshape(5, 1).copy()
    a = symopt.optimizer("soap", [v], precondition_1d=True, precondition_frequency=2)
    b = symopt.optimizer("soap", [col], precondition_frequency=2)
    for _ in range(6):
        g = rng.standard_normal(5)
        a.step([g.copy()])
        b.step([g.reshape(5, 1).copy()])
    np.testing.assert_allclose(v, col.reshape(5), rtol=1e-13, atol=1e-15)
    assert sorted(a.state[0]) == ["GG_0", "Q_0", "exp_avg", "exp_avg_sq", "step"]
    np.testing.assert_allclose(a.state[0]["GG_0"], b.state[0]["GG_0"], rtol=1e-13, atol=1e-15)
    assert sorted(symopt.optimizer("soap", [np.zeros(5)]).state[0]) == ["exp_avg", "exp_avg_sq", "step"]


@pytest.mark.parametrize("dtype, normalize", [("float32", False), ("float64", False), ("float64", True)])
def test_soap_verify_against_mpmath(dtype, normalize):
    """Every step refreshes the eigenbases (precondition_frequency=1): the exact eigh at t = 1 and
    the power-iteration QR with the reordered second moment after, against mpmath at 50 digits
    (and with the update divided by its root mean square, normalize_gradient)."""
    from symopt.verify.check import verify_preconditioned_variant

    family = symopt.family("soap")
    result = verify_preconditioned_variant(family, family.variants[0][1], dtype, steps=3,
                                           hyper={"precondition_frequency": 1, "normalize_gradient": normalize})
    assert result.tolerance == RULE_DB["soap"].tolerance["verify"][np.dtype(dtype).type]
    assert result.samples and result.max_error < result.tolerance, result.worst


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_verify_against_mpmath(dtype):
    from symopt.verify.check import verify

    (result,) = verify(["shampoo"], dtypes=(dtype,), steps=2)
    assert result.tolerance == RULE_DB["shampoo"].tolerance["verify"][np.dtype(dtype).type]
    assert result.max_error < result.tolerance, result.worst


def test_latex_writes_the_kronecker_factors():
    text = symopt.rule("shampoo").latex()
    for part in (r"L_{i, t} &= G_{(i)} G_{(i)}^{T} + L_{i, t-1}", r"H_{i, t} &= L_{i, t}^{-1/(2 n)}",
                 r"M_{t} &= G \times_{i} H_{i, t} \ (i = 0, \dots, n - 1)"):
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
    with pytest.raises(ValueError, match="integer"):
        symopt.optimizer("shampoo", [np.zeros((2, 2))], preconditioning_compute_steps=1.5)
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="integer"):      # the torch backend checks the same hyperparameters
        symopt.torch.Optimizer("shampoo", [torch.zeros(2, 2, requires_grad=True)], backend="torch",
                               preconditioning_compute_steps=1.5)


def test_malformed_preconditioner_is_a_rule_error():
    import sympy as sp

    from symopt.rulebook.matrix import cols, rows
    from symopt.rulebook.preconditioned import Eigenbasis, InverseRoot, MatrixState, Preconditioned

    G = sp.MatrixSymbol("G", rows, cols)
    L = sp.MatrixSymbol("L", rows, rows)
    with pytest.raises(RuleError, match="c \\* Identity or ZeroMatrix"):
        MatrixState(L, L, L + G * G.T, key="a").init_diagonal()
    with pytest.raises(RuleError, match="square MatrixSymbol"):
        InverseRoot(G, 4)
    with pytest.raises(RuleError, match="shape \\(rows, cols\\)"):
        Preconditioned(L, 1, [MatrixState(L, sp.Identity(rows), L + G * G.T, key="a")], L * G)
    R = sp.MatrixSymbol("R", cols, cols)
    with pytest.raises(RuleError, match="square MatrixSymbol"):
        Eigenbasis(L, G, sp.Symbol("v"), True)
    with pytest.raises(RuleError, match="must have the same shape"):
        Eigenbasis(L, R, sp.Symbol("v"), True)
    # every axis: rows × rows states, the value A G, keep and merge only there
    stat = MatrixState(L, sp.Identity(rows), L + G * G.T, key="a")
    with pytest.raises(RuleError, match="states are rows × rows"):
        Preconditioned(G, 1, [MatrixState(R, sp.Identity(cols), R + G.T * G, key="b")], G * R, every_axis=True)
    with pytest.raises(RuleError, match="the value must be A G"):
        Preconditioned(G, 1, [stat], L * G * R, every_axis=True)
    with pytest.raises(RuleError, match="keep is for every_axis nodes"):
        Preconditioned(G, 1, [stat], L * G, keep=rows <= 3)
    with pytest.raises(RuleError, match="merge is for every_axis nodes"):
        Preconditioned(G, 1, [stat], L * G, merge=4)


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


@pytest.mark.parametrize("name, helper, lapack", [("shampoo", "_inverse_root", "syevd"),
                                                  ("soap", "_eigenbasis", "geqrf")])
def test_report_page_shows_the_plan_and_passes_verification(name, helper, lapack):
    from symopt.reporting import report

    page = report(name)
    assert page.startswith("<!DOCTYPE html>") and "<math" in page and "<svg" in page
    assert helper in page and lapack in page      # the generated matrix stage, shown as checked in
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


def test_soap_torch_adapter_keeps_pytorch_optimizers_state_names(libs):
    """symopt.torch.Optimizer("soap") on the Numba backend steps as pytorch_optimizer.SOAP, and its
    state_dict has pytorch-optimizer's layout (GG and Q as lists, one matrix per side, the step
    per group, the copied hyperparameters); resumed from it through torch.save, symopt continues
    the same trajectory, and so does pytorch_optimizer.SOAP."""
    import io

    torch, po = libs.torch, libs.po
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((5, 5))
    ours, ref, theirs = (torch.tensor(w0.copy(), requires_grad=True) for _ in range(3))
    opt = symopt.torch.Optimizer("soap", [ours], lr=1e-2, precondition_frequency=2)
    peer = po.SOAP([theirs], lr=1e-2, precondition_frequency=2)
    grads = [torch.tensor(rng.standard_normal((5, 5))) for _ in range(6)]
    for g in grads[:3]:
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        peer.step()
    assert rel_err(ours.detach(), theirs.detach(), floor=1.0) < RULE_DB["soap"].tolerance["peer exact"][np.float64]
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf)
    entry = saved["state"][0]
    assert sorted(entry) == ["GG", "Q", "exp_avg", "exp_avg_sq", "precondition_frequency", "shampoo_beta", "step"]
    assert [tuple(m.shape) for m in entry["GG"] + entry["Q"]] == [(5, 5)] * 4
    assert (entry["precondition_frequency"], entry["shampoo_beta"]) == (2, 0.95)     # None: β₂
    assert (saved["param_groups"][0]["step"], saved["param_groups"][0]["shampoo_beta"]) == (3, None)
    for side in (0, 1):
        assert rel_err(entry["GG"][side], peer.state[theirs]["GG"][side], floor=1.0) < 1e-12
    # pytorch-optimizer loads it and continues the same trajectory
    theirs2 = ours.detach().clone().requires_grad_(True)
    peer2 = po.SOAP([theirs2], lr=1e-2, precondition_frequency=2)
    peer2.load_state_dict(saved)
    with torch.no_grad():
        ref.copy_(ours)
    resumed = symopt.torch.Optimizer("soap", [ref], lr=1e-2, precondition_frequency=2)
    resumed.load_state_dict(saved)
    for g in grads[3:]:
        ours.grad, ref.grad, theirs2.grad = g.clone(), g.clone(), g.clone()
        opt.step()
        resumed.step()
        peer2.step()
    np.testing.assert_array_equal(ref.detach().numpy(), ours.detach().numpy())
    assert rel_err(ours.detach(), theirs2.detach(), floor=1.0) < RULE_DB["soap"].tolerance["peer"][np.float64]
    bad = dict(entry, GG=entry["GG"][:1] + [torch.zeros(4, 4, dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"state 'GG_1' of param 0 has shape \(4, 4\), expected \(5, 5\)"):
        resumed.load_state_dict({"state": {0: bad}, "param_groups": saved["param_groups"]})


def test_soap_npz_checkpoint_resumes_past_a_refresh(tmp_path):
    """symopt.save/load keep the moments, statistics and eigenbases: a resumed run continues the
    same trajectory through the next power-iteration refresh."""
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal((4, 4)) for _ in range(7)]
    w = rng.standard_normal((4, 4))
    a = symopt.optimizer("soap", [w], precondition_frequency=2)
    for g in grads[:4]:
        a.step([g.copy()])
    a.save(tmp_path / "soap.npz")
    w2 = w.copy()
    b = symopt.optimizer("soap", [w2], precondition_frequency=2)
    b.load(tmp_path / "soap.npz")
    for g in grads[4:]:
        a.step([g.copy()])
        b.step([g.copy()])
    np.testing.assert_array_equal(w2, w)
    for key in ("exp_avg_sq", "Q_0", "Q_1"):
        np.testing.assert_array_equal(b.state[0][key], a.state[0][key])


def test_soap_resumes_from_pytorch_optimizers_own_checkpoint(libs):
    """pytorch_optimizer.SOAP's state_dict (step per group, shampoo_beta=None, its per-param copies
    of precondition_frequency and shampoo_beta) loads into symopt.torch.Optimizer("soap"), which
    continues the peer's trajectory (through refreshes: the "peer" tolerance)."""
    torch, po = libs.torch, libs.po
    rng = np.random.default_rng(6)
    w0 = rng.standard_normal((5, 5))
    theirs = torch.tensor(w0, requires_grad=True)
    peer = po.SOAP([theirs], lr=1e-2, precondition_frequency=2)
    grads = [torch.tensor(rng.standard_normal((5, 5))) for _ in range(7)]
    for g in grads[:3]:
        theirs.grad = g.clone()
        peer.step()
    ours = theirs.detach().clone().requires_grad_(True)
    opt = symopt.torch.Optimizer("soap", [ours], lr=1e-2)
    opt.load_state_dict(peer.state_dict())
    assert opt.param_groups[0]["precondition_frequency"] == 2 and opt.param_groups[0]["shampoo_beta"] == -1
    assert int(opt.state[ours]["step"]) == 3
    for g in grads[3:]:
        theirs.grad, ours.grad = g.clone(), g.clone()
        peer.step()
        opt.step()
    assert rel_err(ours.detach(), theirs.detach(), floor=1.0) < RULE_DB["soap"].tolerance["peer"][np.float64]


def test_nd_checkpoints_keep_a_state_per_axis(tmp_path, libs):
    """1-D and 3-D params: symopt.save/load and the torch format resume Shampoo's trajectory, with
    one pre_cond_k / inv_pre_cond_k per axis under pytorch-optimizer's names and shapes."""
    import io

    torch = libs.torch
    rng = np.random.default_rng(8)
    shapes = [(3, 4, 2), (2,)]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]
    w = [rng.standard_normal(s) for s in shapes]
    a = symopt.optimizer("shampoo", w, momentum=0.5)
    for g in grads[:3]:
        a.step([x.copy() for x in g])
    a.save(tmp_path / "nd.npz")
    w2 = [x.copy() for x in w]
    b = symopt.optimizer("shampoo", w2, momentum=0.5)
    b.load(tmp_path / "nd.npz")
    tw = [torch.tensor(x.copy(), requires_grad=True) for x in w]
    topt = symopt.torch.Optimizer("shampoo", tw, momentum=0.5)
    topt.load_state_dict({"state": {j: {"step": torch.tensor(3.0),
                                        **{k: torch.tensor(v) for k, v in a.state[j].items() if k != "step"}}
                                    for j in range(2)},
                          "param_groups": [{**topt.param_groups[0], "params": [0, 1]}]})
    buf = io.BytesIO()
    torch.save(topt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf)
    assert {k: tuple(v.shape) for k, v in saved["state"][1].items()} == {
        "step": (), "momentum_buffer": (2,), "pre_cond_0": (2, 2), "inv_pre_cond_0": (2, 2)}
    assert [tuple(saved["state"][0][f"pre_cond_{k}"].shape) for k in range(3)] == [(3, 3), (4, 4), (2, 2)]
    for g in grads[3:]:
        a.step([x.copy() for x in g])
        b.step([x.copy() for x in g])
        for t, x in zip(tw, g):
            t.grad = torch.tensor(x.copy())
        topt.step()
    for j in range(2):
        np.testing.assert_array_equal(w2[j], w[j])
        np.testing.assert_array_equal(tw[j].detach().numpy(), w[j])


def test_soap_nd_state_dict_in_pytorch_optimizers_layout(libs):
    """SOAP on a vector (not rotated), a cube and a 5 × 2 × 3 param whose first axis is longer than
    max_precondition_dim: the torch-format state keeps GG and Q as one entry per axis, [] where the
    axis is left as it is, as pytorch-optimizer does; each side loads the other's state_dict and
    continues its trajectory."""
    torch, po = libs.torch, libs.po
    rng = np.random.default_rng(9)
    shapes = [(5,), (3, 3, 3), (5, 2, 3)]
    kw = dict(lr=1e-2, precondition_frequency=2, max_precondition_dim=4)
    ours = [torch.tensor(rng.standard_normal(s), requires_grad=True) for s in shapes]
    theirs = [p.detach().clone().requires_grad_(True) for p in ours]
    opt, peer = symopt.torch.Optimizer("soap", ours, **kw), po.SOAP(theirs, **kw)
    grads = [[torch.tensor(rng.standard_normal(s)) for s in shapes] for _ in range(7)]
    for g in grads[:3]:
        for p, q, x in zip(ours, theirs, g):
            p.grad, q.grad = x.clone(), x.clone()
        opt.step()
        peer.step()
    sd, psd = opt.state_dict(), peer.state_dict()
    for j in range(3):
        mine, its = sd["state"][j], psd["state"][j]
        assert sorted(k for k in mine if k != "step") == sorted(its)     # symopt keeps the step per param too
        for name in ("GG", "Q"):
            assert [tuple(m.shape) if len(m) else () for m in mine[name]] == \
                   [tuple(m.shape) if len(m) else () for m in its[name]], (j, name)
    resumed_peer = po.SOAP([p.detach().clone().requires_grad_(True) for p in ours], **kw)
    resumed_peer.load_state_dict(sd)
    resumed = symopt.torch.Optimizer("soap", [p.detach().clone().requires_grad_(True) for p in theirs], **kw)
    resumed.load_state_dict(psd)
    for g in grads[3:]:
        for params in (theirs, resumed_peer.param_groups[0]["params"], resumed.param_groups[0]["params"]):
            for p, x in zip(params, g):
                p.grad = x.clone()
        peer.step()
        resumed_peer.step()
        resumed.step()
    tol = RULE_DB["soap"].tolerance["peer"][np.float64]
    for j in range(3):
        ref = theirs[j].detach()
        assert rel_err(resumed.param_groups[0]["params"][j].detach(), ref, floor=1.0) < tol, j
        assert rel_err(resumed_peer.param_groups[0]["params"][j].detach(), ref, floor=1.0) < tol, j


def test_soap_merge_dims_equals_pytorch_optimizer(libs):
    """merge_dims=True reads each param with adjacent axes merged while their product stays within
    max_precondition_dim (pytorch-optimizer's merge_small_dims: (2, 3, 4, 5) → (6, 4, 5) at 8): the
    trajectory, and the torch-format GG/Q with one entry per merged axis, equal pytorch-optimizer's."""
    torch, po = libs.torch, libs.po
    rng = np.random.default_rng(10)
    shapes = [(2, 3, 4, 5), (6, 6), (3, 3, 3)]
    kw = dict(lr=1e-2, merge_dims=True, max_precondition_dim=8, precondition_frequency=3)
    ours = [torch.tensor(rng.standard_normal(s), requires_grad=True) for s in shapes]
    theirs = [p.detach().clone().requires_grad_(True) for p in ours]
    opt, peer = symopt.torch.Optimizer("soap", ours, **kw), po.SOAP(theirs, **kw)
    for step in range(1, 9):
        for p, q in zip(ours, theirs):
            p.grad = torch.tensor(rng.standard_normal(p.shape))
            q.grad = p.grad.clone()
        opt.step()
        peer.step()
        tol = RULE_DB["soap"].tolerance["peer exact" if step <= 4 else "peer"][np.float64]
        for j in range(3):
            assert rel_err(ours[j].detach(), theirs[j].detach(), floor=1.0) < tol, (step, j)
    sd = opt.state_dict()
    assert [tuple(m.shape) for m in sd["state"][0]["GG"]] == [(6, 6), (4, 4), (5, 5)]
    for j in range(3):
        assert [tuple(m.shape) for m in sd["state"][j]["Q"]] == [tuple(m.shape) for m in peer.state[theirs[j]]["Q"]]


def test_soap_merge_dims_refusals():
    with pytest.raises(ValueError, match="channels_last"):
        symopt.optimizer("soap", [np.zeros((2, 3, 2, 2))], merge_dims=True, data_format="channels_last")
    with pytest.raises(ValueError, match="one axis of 6"):    # pytorch-optimizer fails to reshape it too
        symopt.optimizer("soap", [np.zeros((2, 3))], merge_dims=True)


def test_float32_rank_deficient_statistics_root_as_pytorch_optimizers_svd(libs):
    """A wide float32 matrix: its column statistic GᵀG (64 × 64 from rank-4 gradients) has eigenvalues
    that rounding makes slightly negative.  pytorch-optimizer roots by an SVD (sign(λ)|λ|^{-1/p});
    symopt's eigendecomposition does the same, so no NaN and the same trajectory.  Tolerance 1e-3
    (params max-norm): float32 rounding in the statistic's null space, where both results are set by
    rounding, scaled by |λ|^{-1/4} of eigenvalues ~1e-7 of its norm."""
    torch = libs.torch
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal((4, 64)).astype(np.float32)
    params = [p0.copy()]
    tp = torch.tensor(p0.copy(), requires_grad=True)
    opt = symopt.optimizer("shampoo", params, lr=1e-2)
    peer = libs.po.Shampoo([tp], lr=1e-2)
    for step in range(10):
        g = rng.standard_normal((4, 64)).astype(np.float32)
        opt.step([g.copy()])
        tp.grad = torch.tensor(g.copy())
        peer.step()
        assert np.isfinite(params[0]).all(), step
        assert rel_err(params[0], tp.detach(), floor=1.0) < 1e-3, step
