"""Matrix rules (an ``Iterate`` in the rule): ``muon`` against a float64 NumPy transcription of
torch.optim.Muon 2.13's algorithm and against torch.optim.Muon itself, a user-written
Newton–Schulz rule, checkpoints, and bad input."""

import numpy as np
import pytest
import sympy as sp

import symopt
from symopt.rulebook.matrix import Iterate, cols, frobenius_norm, rows
from symopt.rulebook.metadata import RuleError

from conftest import rel_err

#: (3, 10) and (9, 3) run the iteration in the Gram space (the larger side ≥ 3× the smaller).
SHAPES = [(5, 4), (4, 6), (3, 2, 3), (3, 10), (9, 3)]
#: float64: both sides iterate in float64 (summation order of BLAS only); float32: symopt
#: iterates in float32 against the float64 reference.
TOL = {np.float64: 1e-9, np.float32: 1e-5}
#: torch.optim.Muon runs Newton–Schulz in bfloat16 (8 significant bits): after 20 steps the
#: params differ by ~1e-3 of their largest entry (measured 5e-4..9e-4 on 8×6 and 6×10).
TORCH_BF16_TOL = 5e-3


def newton_schulz64(m, coefficients=(3.4445, -4.7750, 2.0315), steps=5, eps=1e-7):
    """torch's ``_zeropower_via_newtonschulz`` in float64 NumPy, without the bfloat16 cast."""
    a, b, c = coefficients
    x = m.T if m.shape[0] > m.shape[1] else m
    x = x / max(np.linalg.norm(x), eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if m.shape[0] > m.shape[1] else x


def muon64(p, grads, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn=None, **ns):
    """torch's ``_single_tensor_muon`` in float64 (a param (d0, d1, ...) read as d0 × (d1⋯))."""
    p, buf = p.astype(np.float64), np.zeros(p.shape)
    for g in grads:
        g = g.astype(np.float64)
        buf = buf + (1 - momentum) * (g - buf)
        u = g + momentum * (buf - g) if nesterov else buf
        m = u.reshape(len(u), -1)
        o = newton_schulz64(m, **ns).reshape(p.shape)
        ratio = (0.2 * np.sqrt(max(m.shape)) if adjust_lr_fn == "match_rms_adamw"
                 else np.sqrt(max(1, m.shape[0] / m.shape[1])))
        p = p * (1 - lr * weight_decay) - lr * ratio * o
    return p


def test_latex_shows_the_newton_schulz_iteration():
    text = symopt.rule("muon").latex()
    assert r"X_{j+1} &= a X_{j} + \left(b X_{j} X_{j}^{T} + c \left(X_{j} X_{j}^{T}\right)^{2}\right) X_{j}" in text
    assert "X_{0}" in text and "X_{k}" in text


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nesterov,adjust", [(True, None), (False, "match_rms_adamw")])
def test_muon_matches_float64_transcription(shape, dtype, nesterov, adjust):
    rng = np.random.default_rng(1)
    p = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(20)]
    ref = muon64(p, grads, lr=0.02, nesterov=nesterov, momentum=0.9, adjust_lr_fn=adjust, steps=4,
                 coefficients=(3.0, -3.2, 1.2))
    opt = symopt.optimizer("muon", [p], lr=0.02, nesterov=nesterov, momentum=0.9, ns_steps=4, adjust_lr_fn=adjust,
                           ns_coefficients=(3.0, -3.2, 1.2))
    for g in grads:
        opt.step([g])
    assert rel_err(p, ref, floor=1) <= TOL[dtype]


def test_muon_matches_torch_optim_muon_within_bf16():
    torch = pytest.importorskip("torch")
    import symopt.torch

    gen = torch.Generator().manual_seed(0)
    for shape, adjust in [((8, 6), None), ((6, 10), "match_rms_adamw")]:
        w = torch.randn(shape, generator=gen)
        w_ref = w.clone()
        ours = symopt.torch.Optimizer("muon", [w], lr=0.02, adjust_lr_fn=adjust)
        theirs = torch.optim.Muon([w_ref], lr=0.02, adjust_lr_fn=adjust)
        for _ in range(20):
            g = torch.randn(shape, generator=gen)
            w.grad, w_ref.grad = g.clone(), g.clone()
            ours.step()
            theirs.step()
        assert rel_err(w.numpy(), w_ref.numpy(), floor=1) <= TORCH_BF16_TOL
        # torch-format state dicts are exchanged both ways (state "momentum_buffer").
        buf = ours.state_dict()["state"][0]["momentum_buffer"]
        assert rel_err(buf.numpy(), theirs.state_dict()["state"][0]["momentum_buffer"].numpy(), floor=1) <= 1e-6
        fresh = torch.optim.Muon([w_ref], lr=0.02, adjust_lr_fn=adjust)
        fresh.load_state_dict(ours.state_dict())
        assert torch.equal(fresh.state[w_ref]["momentum_buffer"], buf)


def test_npz_checkpoint_resumes_exactly(tmp_path):
    rng = np.random.default_rng(2)
    p = rng.standard_normal((6, 4))
    q = p.copy()
    grads = [rng.standard_normal((6, 4)) for _ in range(6)]
    a = symopt.optimizer("muon", [p], lr=0.05, adjust_lr_fn="match_rms_adamw")
    for g in grads[:3]:
        a.step([g])
    a.save(tmp_path / "muon.npz")
    b = symopt.optimizer("muon", [q], lr=0.05)  # the checkpoint's groups win: adjust_lr_fn comes back
    b.load(tmp_path / "muon.npz")
    assert b.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    for g in grads[3:]:
        a.step([g])
        b.step([g])
    np.testing.assert_array_equal(p, q)
    c = symopt.load(tmp_path / "muon.npz", [np.zeros((6, 4))])
    assert c.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"


def test_bad_input_changes_nothing():
    with pytest.raises(ValueError, match="at least 2-D"):
        symopt.optimizer("muon", [np.zeros(3)])
    p = np.ones((3, 4), dtype=np.float32)
    opt = symopt.optimizer("muon", [p])
    g = np.ones((3, 4), dtype=np.float32)
    g[1, 2] = np.nan
    with pytest.raises(symopt.NonFiniteGradientError):
        opt.step([g])
    assert (p == 1).all() and (opt.state[0]["momentum_buffer"] == 0).all()
    with pytest.raises(ValueError, match="ns_steps must be an integer"):
        symopt.optimizer("muon", [p], ns_steps=2.5)
    with pytest.raises(ValueError, match="'adjust_lr_fn' must be one of None, 'original', 'match_rms_adamw'"):
        symopt.optimizer("muon", [p], adjust_lr_fn="rms")


def newton_schulz_rule():
    """A user's Muon-like rule: heavy-ball momentum and 3 cubic Newton–Schulz steps (the README's)."""
    w, g, m = sp.symbols("w g m")
    lr, beta = sp.symbols("lr beta")
    X = sp.MatrixSymbol("X", rows, cols)
    polar = Iterate(X, 1.5 * X - 0.5 * X * X.T * X, m / frobenius_norm(m), 3)
    return symopt.Rule("cubic_muon", param=w, grad=g, state={m: 0}, hyper={lr: 0.01, beta: 0.9},
                       updates=[(m, beta * m + g), (w, w - lr * polar)])


def test_user_matrix_rule_runs_and_matches_numpy():
    rng = np.random.default_rng(3)
    p = rng.standard_normal((7, 3))
    grads = [rng.standard_normal((7, 3)) for _ in range(5)]
    ref, m = p.copy(), np.zeros_like(p)
    for g in grads:
        m = 0.9 * m + g
        x = m.T / np.linalg.norm(m)
        for _ in range(3):
            x = 1.5 * x - 0.5 * x @ x.T @ x
        ref = ref - 0.01 * x.T
    opt = symopt.optimizer(newton_schulz_rule(), [p])
    for g in grads:
        opt.step([g])
    assert rel_err(p, ref, floor=1) <= 1e-12


def test_iteration_body_must_be_an_odd_polynomial():
    w, g = sp.symbols("w g")
    X = sp.MatrixSymbol("X", rows, cols)
    rule = symopt.Rule("even", param=w, grad=g, updates=[(w, w - Iterate(X, X * X.T * X * X.T, g, 2))])
    with pytest.raises(RuleError, match="odd matrix polynomial"):
        symopt.optimizer(rule, [np.zeros((2, 2))])
    with pytest.raises(RuleError, match="only its variable"):
        Y = sp.MatrixSymbol("Y", rows, cols)
        symopt.Rule("other", param=w, grad=g, updates=[(w, w - Iterate(X, X + Y, g, 2))])
    with pytest.raises(RuleError, match="holds no Iterate"):
        symopt.Rule("shape", param=w, grad=g, updates=[(w, w - g / rows)])


@pytest.mark.parametrize("make", [lambda: "muon", newton_schulz_rule], ids=["muon", "user"])
def test_verify_against_mpmath_on_small_matrices(make):
    from symopt.verify.check import TOLERANCE, verify

    results = verify([make()], steps=2)
    assert [r.dtype for r in results] == ["float32", "float64"]
    for r in results:
        assert r.max_error <= TOLERANCE[r.dtype], r.worst


def _model(rng, dtype=np.float64):
    """Two matrices for Muon, a bias and a gain vector for AdamW."""
    return [rng.standard_normal(s).astype(dtype) for s in ((6, 4), (4,), (4, 5), (5,))]


def test_groups_with_their_own_rule_equal_one_optimizer_per_rule():
    rng = np.random.default_rng(4)
    params = _model(rng)
    copies = [p.copy() for p in params]
    opt = symopt.optimizer("muon", [{"params": [params[0], params[2]]},
                                    {"params": [params[1], params[3]], "rule": "adamw", "lr": 3e-3}], lr=0.02)
    assert [g["rule"] for g in opt.param_groups] == ["muon", "adamw"]
    muon = symopt.optimizer("muon", [copies[0], copies[2]], lr=0.02)
    adamw = symopt.optimizer("adamw", [copies[1], copies[3]], lr=3e-3)
    for _ in range(5):
        grads = [rng.standard_normal(p.shape) for p in opt.params]
        opt.step(grads)
        muon.step([grads[0], grads[1]])
        adamw.step([grads[2], grads[3]])
    for mine, ref in zip(opt.params, [copies[0], copies[2], copies[1], copies[3]]):
        np.testing.assert_array_equal(mine, ref)
    # state_dict keeps each group's rule; a fresh optimizer resumes exactly
    sd = opt.state_dict()
    assert [g["rule"] for g in sd["param_groups"]] == ["muon", "adamw"]
    fresh_params = [p.copy() for p in opt.params]
    fresh = symopt.optimizer("muon", [{"params": fresh_params[:2]},
                                      {"params": fresh_params[2:], "rule": "adamw"}], lr=0.5)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == 0.02 and fresh.param_groups[1]["lr"] == 3e-3
    grads = [rng.standard_normal(p.shape) for p in opt.params]
    opt.step(grads)
    fresh.step(grads)
    for a, b in zip(opt.params, fresh_params):
        np.testing.assert_array_equal(a, b)
    swapped = {**sd, "param_groups": [{**sd["param_groups"][0], "rule": "adamw"}, sd["param_groups"][1]]}
    with pytest.raises(ValueError, match="is for rule 'adamw', not 'muon'"):
        fresh.load_state_dict(swapped)


def test_groups_with_their_own_rule_check_every_gradient_first():
    rng = np.random.default_rng(5)
    params = _model(rng)
    opt = symopt.optimizer("muon", [{"params": [params[0]]}, {"params": [params[1]], "rule": "adamw"}])
    before = [p.copy() for p in opt.params]
    grads = [np.ones((6, 4)), np.array([1.0, np.nan, 0.0, 0.0])]
    with pytest.raises(symopt.NonFiniteGradientError):
        opt.step(grads)
    for p, b in zip(opt.params, before):
        np.testing.assert_array_equal(p, b)
    with pytest.raises(ValueError, match="at least 2-D"):
        symopt.optimizer("adamw", [{"params": [params[1]]}, {"params": [params[3]], "rule": "muon"}])


def test_muon_with_aux_adamw_matches_torch():
    """Keller Jordan's MuonWithAuxAdam split: torch.optim.Muon on the matrices, AdamW on the rest."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    params = _model(rng, np.float32)
    tparams = [torch.tensor(p) for p in params]
    opt = symopt.optimizer("muon", [{"params": [params[0], params[2]]},
                                    {"params": [params[1], params[3]], "rule": "adamw", "lr": 3e-3}], lr=0.02)
    tm = torch.optim.Muon([tparams[0], tparams[2]], lr=0.02)
    ta = torch.optim.AdamW([tparams[1], tparams[3]], lr=3e-3)
    for _ in range(10):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in opt.params]
        opt.step(grads)
        for t, g in zip([tparams[0], tparams[2], tparams[1], tparams[3]], grads):
            t.grad = torch.tensor(g)
        tm.step()
        ta.step()
    ours = opt.params
    for k, t in enumerate([tparams[0], tparams[2]]):
        assert rel_err(ours[k], t.numpy(), floor=1) <= TORCH_BF16_TOL
    for k, t in enumerate([tparams[1], tparams[3]]):
        assert rel_err(ours[2 + k], t.numpy(), floor=1) <= 1e-5


def test_cli_show_and_verify(capsys):
    from symopt.cli import main

    assert main(["show", "muon"]) == 0
    out = capsys.readouterr().out
    assert "in two passes around a matrix iteration" in out and "adjust_lr_fn" in out
    assert main(["verify", "muon", "--steps", "1"]) == 0
    assert "2 passed, 0 failed" in capsys.readouterr().out


def test_septic_iteration_runs_horner_beyond_degree_two():
    """A degree-3 odd polynomial (X (XᵀX)³ term): Horner's gemm steps after the first syrk."""
    w, g = sp.symbols("w g")
    X = sp.MatrixSymbol("X", rows, cols)
    gram = X * X.T
    coeffs = (2.0, -1.5, 0.8, -0.2)
    body = coeffs[0] * X + (coeffs[1] * gram + coeffs[2] * gram**2 + coeffs[3] * gram**3) * X
    rule = symopt.Rule("septic", param=w, grad=g, updates=[(w, w - 0.1 * Iterate(X, body, g / frobenius_norm(g), 2))])
    rng = np.random.default_rng(7)
    for shape in [(3, 5), (5, 3), (2, 7)]:          # (2, 7): in the Gram space
        p, grad = rng.standard_normal(shape), rng.standard_normal(shape)
        x = grad / np.linalg.norm(grad)
        for _ in range(2):
            a = x @ x.T
            x = coeffs[0] * x + (coeffs[1] * a + coeffs[2] * a @ a + coeffs[3] * a @ a @ a) @ x
        ref = p - 0.1 * x
        symopt.optimizer(rule, [p]).step([grad])
        assert rel_err(p, ref, floor=1) <= 1e-13


# Optax's MuonDimensionNumbers: (param shape, reduction_axis, output_axis, the NumPy reading of one
# matrix: batch index -> matrix, and back).  Batch axes lead; reduction × output, or output first.
DIMS = [
    ((3, 4, 6), 1, 2, lambda x, k: x[k], lambda m: m),                       # stacked (L, rows, cols)
    ((3, 4, 6), 2, 1, lambda x, k: x[k].T, lambda m: m.T),                   # output axis first
    ((2, 3, 5, 2), (2, 3), 1, lambda x, k: x[k].reshape(3, 10).T, lambda m: m.T.reshape(3, 5, 2)),
    ((2, 2, 3, 4), (0, 1, 2), 3, lambda x, k: x.reshape(12, 4), lambda m: m.reshape(2, 2, 3, 4)),  # conv HWIO
]


@pytest.mark.parametrize("shape, red, out, view, back", DIMS)
def test_dimension_numbers_match_float64_transcription(shape, red, out, view, back):
    """Each batch matrix is stepped as torch steps one 2-D param (its own norm and lr ratio)."""
    from types import SimpleNamespace

    rng = np.random.default_rng(11)
    p = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(6)]
    dims = SimpleNamespace(reduction_axis=red, output_axis=out)      # duck-typed MuonDimensionNumbers
    q = p.copy()
    opt = symopt.optimizer("muon", [{"params": [q], "dimension_numbers": dims}], lr=0.02)
    for g in grads:
        opt.step([g])
    nbatch = p.size // view(p, 0).size
    ref = np.stack([back(muon64(view(p, k), [view(g, k) for g in grads], lr=0.02)) for k in range(nbatch)])
    assert rel_err(q, ref.reshape(shape)) <= TOL[np.float64]


def test_dimension_numbers_match_optax_orthogonalization():
    """With momentum 0 and no weight decay the step is −γρ·O(g): O against Optax's, batch axis 0."""
    pytest.importorskip("jax")
    optax_muon = pytest.importorskip("optax.contrib._muon")
    import jax.numpy as jnp

    dims = optax_muon.MuonDimensionNumbers(reduction_axis=(2, 3), output_axis=1)
    rng = np.random.default_rng(12)
    g = rng.standard_normal((2, 3, 5, 2)).astype(np.float32)
    p = np.zeros_like(g)
    symopt.optimizer("muon", [{"params": [p], "dimension_numbers": dims}], lr=1.0, momentum=0.0,
                     weight_decay=0.0).step([g])
    ortho = np.asarray(optax_muon.orthogonalize_via_newton_schulz(
        jnp.asarray(g), jnp.asarray((3.4445, -4.7750, 2.0315)), 5, "frobenius", 1e-7, dims))
    ratio = np.sqrt(max(1, 10 / 3))                                   # rows 5·2 (reduction), cols 3 (output)
    # both in float32 (measured 3e-5: Newton–Schulz amplifies the rounding of small singular values);
    # Optax adds ε to the norm where torch takes max(‖U‖, ε): 1e-8 relative here
    assert rel_err(-p / ratio, ortho) <= 1e-4


def test_dimension_numbers_bad_input_and_checkpoints(tmp_path):
    rng = np.random.default_rng(13)
    p = rng.standard_normal((3, 4, 6))
    grads = [rng.standard_normal(p.shape) for _ in range(4)]
    for dims, err in [({"reduction_axis": 0, "output_axis": 2}, "batch axes must be the leading"),
                      ({"reduction_axis": 1, "output_axis": 1}, "disjoint"),
                      ({"reduction_axis": 1, "output_axis": 5}, "outside a param"),
                      ({"reduction_axis": 1.5, "output_axis": 2}, "integers"),
                      ({"rows": 1}, "unknown keys"),
                      ("rows", "dimension_numbers must be")]:
        with pytest.raises((ValueError, TypeError), match=err):
            symopt.optimizer("muon", [{"params": [p], "dimension_numbers": dims}])
    with pytest.raises(ValueError, match="elementwise rule"):
        symopt.optimizer("adamw", [{"params": [p], "dimension_numbers": (1, 2)}])
    q = p.copy()
    a = symopt.optimizer("muon", [{"params": [p], "dimension_numbers": (1, 2)}])
    for g in grads[:2]:
        a.step([g])
    a.save(tmp_path / "dims.npz")
    b = symopt.load(tmp_path / "dims.npz", [q])
    assert b.param_groups[0]["dimension_numbers"] == ((1,), (2,))
    for g in grads[2:]:
        a.step([g])
        b.step([g])
    np.testing.assert_array_equal(p, q)
    r = q.copy()
    c = symopt.optimizer("muon", [r])                                # default d0 × (d1⋯) until loaded:
    c.load_state_dict(a.state_dict())                                # the saved groups win
    assert c.param_groups[0]["dimension_numbers"] == ((1,), (2,))
    a.step([grads[0]])
    c.step([grads[0]])
    np.testing.assert_array_equal(p, r)
    bad = a.state_dict()
    bad["param_groups"][0]["dimension_numbers"] = (0, 2)
    with pytest.raises(ValueError, match="batch axes must be the leading"):
        c.load_state_dict(bad)
    assert c.param_groups[0]["dimension_numbers"] == ((1,), (2,))


def test_dimension_numbers_in_the_torch_adapter_and_its_checkpoints():
    """symopt.torch.Optimizer takes a group's dimension_numbers (beside a group without), steps as
    symopt.optimizer does, and keeps it as plain tuples in state_dict (torch.load(weights_only=True))."""
    torch = pytest.importorskip("torch")
    import io

    from types import SimpleNamespace

    import symopt.torch

    rng = np.random.default_rng(14)
    p, w = rng.standard_normal((3, 4, 6)), rng.standard_normal((5, 3))
    grads = [(rng.standard_normal(p.shape), rng.standard_normal(w.shape)) for _ in range(4)]
    q, v = p.copy(), w.copy()
    ref = symopt.optimizer("muon", [{"params": [q], "dimension_numbers": (2, 1)}, {"params": [v]}], lr=0.02)
    t, tw = torch.tensor(p, requires_grad=True), torch.tensor(w, requires_grad=True)
    dims = SimpleNamespace(reduction_axis=2, output_axis=1)
    opt = symopt.torch.Optimizer("muon", [{"params": [t], "dimension_numbers": dims}, {"params": [tw]}], lr=0.02)
    for g, gw in grads[:2]:
        ref.step([g, gw])
        t.grad, tw.grad = torch.tensor(g), torch.tensor(gw)
        opt.step()
    np.testing.assert_array_equal(t.detach().numpy(), q)
    np.testing.assert_array_equal(tw.detach().numpy(), v)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    t2, tw2 = torch.tensor(q, requires_grad=True), torch.tensor(v, requires_grad=True)
    opt2 = symopt.torch.Optimizer("muon", [{"params": [t2]}, {"params": [tw2]}], lr=0.02)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.param_groups[0]["dimension_numbers"] == ((2,), (1,))
    for g, gw in grads[2:]:
        ref.step([g, gw])
        t2.grad, tw2.grad = torch.tensor(g), torch.tensor(gw)
        opt2.step()
    np.testing.assert_array_equal(t2.detach().numpy(), q)
    with pytest.raises(ValueError, match="elementwise rule"):
        symopt.torch.Optimizer("adamw", [{"params": [t], "dimension_numbers": (1, 2)}])


def test_gram_space_float32_on_a_low_rank_gradient():
    """The Gram-space iteration (64×256) in float32 on a rank-8 gradient plus noise: its small singular
    values are where float32 rounding of A = XXᵀ shows.  Norm-wise against float64 it measured 3e-4
    (the direct float32 iteration 1.5e-5, torch's bfloat16 one 0.4); the singular values stay Muon's."""
    rng = np.random.default_rng(15)
    g = (rng.standard_normal((64, 8)) @ rng.standard_normal((8, 256))
         + 1e-4 * rng.standard_normal((64, 256))).astype(np.float32)
    p = np.zeros_like(g)
    symopt.optimizer("muon", [p], lr=1.0, momentum=0.0, weight_decay=0.0).step([g])
    ref = newton_schulz64(g.astype(np.float64))
    assert np.linalg.norm(-p - ref) <= 2e-3 * np.linalg.norm(ref)
    s, s_ref = np.linalg.svd(-p.astype(np.float64), compute_uv=False), np.linalg.svd(ref, compute_uv=False)
    assert np.abs(s - s_ref).max() <= 2e-3
