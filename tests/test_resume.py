"""Exact resume: 100 steps equal, bit for bit, 50 steps + ``symopt.save`` + ``symopt.load`` in a
NEW process + 50 more steps -- for every rule of ``tests/rule_db.py`` (which
``test_rule_db.py`` holds equal to ``symopt.rules()``) and both dtypes.

Each run uses two param groups (the second with half the learning rate, when the rule has
``lr``), ``on_nonfinite="skip"`` and one NaN gradient at step 20, so the checkpoint must
carry per-group hyperparameters and the skipped-step count as well as state and step
counts; one more run (adam, float32) has a cosine-plus-expression learning-rate schedule and
a linear weight-decay schedule, which the checkpoint stores as exact expressions.  The
second halves of all runs execute in ONE subprocess (numba loads the
kernels the parent compiled from its on-disk cache).  Comparison is on raw bytes
(``tobytes``), so even a -0.0 or a NaN payload that differs would fail.

Also: loading into another rule, another shape, another dtype, a changed formula or a
malformed file fails clearly and changes nothing.
"""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy as sp
from rule_db import ELEMENTWISE

import symopt
from symopt.runtime.checkpoint import CheckpointError

SHAPES = [(3, 4), (5,)]
STEPS, HALF, NAN_STEP = 100, 50, 20
DTYPES = [np.float32, np.float64]
CASES = [(name, np.dtype(dt).name) for name in ELEMENTWISE for dt in DTYPES]  # matrix rules: test_matrix.py


def _setup(name, dtype, seed):
    rng = np.random.default_rng(seed)
    params = [(rng.standard_normal(s) * 0.5 + 1.0).astype(dtype) for s in SHAPES]
    grads = [[(rng.standard_normal(s) * 10.0 ** rng.uniform(-2, 0)).astype(dtype) for s in SHAPES]
             for _ in range(STEPS)]
    grads[NAN_STEP - 1][1][2] = np.nan
    defaults = symopt.optimizer(name, [np.zeros(1, dtype)]).defaults
    groups = [{"params": params[:1]}, {"params": params[1:]}]
    if isinstance(defaults.get("lr"), float) and defaults["lr"] > 0:
        groups[1]["lr"] = defaults["lr"] * 0.5
    return params, grads, groups


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import symopt

    jobs = json.load(open(sys.argv[1]))
    for job in jobs:
        data = np.load(job["grads"], allow_pickle=False)
        params = [np.zeros(s, job["dtype"]) for s in job["shapes"]]
        opt = symopt.load(job["checkpoint"], params)
        for k in range(job["steps"]):
            opt.step([data[f"g{k}_{j}"] for j in range(len(params))])
        np.savez(job["out"], *params, skipped=np.array(opt.skipped_steps),
                 steps=np.array([opt.state[j]["step"] for j in range(len(params))]))
""")


def test_resume_in_a_new_process_is_bit_exact(tmp_path):
    jobs, expected = [], {}
    for k, (name, dtype) in enumerate(CASES):
        params, grads, groups = _setup(name, dtype, seed=k)
        full = [p.copy() for p in params]
        full_groups = [{**groups[0], "params": full[:1]}, {**groups[1], "params": full[1:]}]
        opt_full = symopt.optimizer(name, full_groups, on_nonfinite="skip")
        for g in grads:
            opt_full.step(g)
        assert opt_full.skipped_steps == 1
        opt = symopt.optimizer(name, groups, on_nonfinite="skip")
        for g in grads[:HALF]:
            opt.step(g)
        ckpt = tmp_path / f"{k}.npz"
        symopt.save(ckpt, opt)
        gfile = tmp_path / f"{k}-grads.npz"
        np.savez(gfile, **{f"g{s}_{j}": g for s, gs in enumerate(grads[HALF:]) for j, g in enumerate(gs)})
        jobs.append({"checkpoint": str(ckpt), "grads": str(gfile), "dtype": dtype, "shapes": SHAPES,
                     "steps": STEPS - HALF, "out": str(tmp_path / f"{k}-out.npz")})
        expected[k] = (full, [opt_full.state[j]["step"] for j in range(len(SHAPES))])
    # scheduled hyperparameters travel as exact expressions and are rebuilt in the new process
    k = len(CASES)
    params, grads, groups = _setup("adam", np.float32, seed=k)
    sched = {"lr": symopt.schedule.cosine(1e-2, STEPS, 10) + symopt.schedule.expr("1e-4*exp(-t/30)"),
             "weight_decay": symopt.schedule.linear(0.0, 0.05, HALF + 10)}
    clean = [[np.nan_to_num(x) for x in g] for g in grads]
    full = [p.copy() for p in params]
    opt_full = symopt.optimizer("adam", full, **sched)
    for g in clean:
        opt_full.step(g)
    opt = symopt.optimizer("adam", params, **sched)
    for g in clean[:HALF]:
        opt.step(g)
    symopt.save(tmp_path / "sched.npz", opt)
    np.savez(tmp_path / "sched-grads.npz", **{f"g{s}_{j}": g for s, gs in enumerate(clean[HALF:])
                                                for j, g in enumerate(gs)})
    jobs.append({"checkpoint": str(tmp_path / "sched.npz"), "grads": str(tmp_path / "sched-grads.npz"),
                 "dtype": "float32", "shapes": SHAPES, "steps": STEPS - HALF, "out": str(tmp_path / "sched-out.npz")})
    expected["sched"] = (full, [opt_full.state[j]["step"] for j in range(len(SHAPES))])
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "child.py").write_text(CHILD)
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "jobs.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mismatched = []
    for k, (name, dtype) in enumerate(CASES):
        with np.load(jobs[k]["out"], allow_pickle=False) as out:
            resumed = [out[f"arr_{j}"] for j in range(len(SHAPES))]
            assert int(out["skipped"]) == 1, f"{name} {dtype}: skipped_steps not restored"
            assert list(out["steps"]) == expected[k][1], f"{name} {dtype}: step counts differ"
        full = expected[k][0]
        if not all(a.dtype == b.dtype and a.tobytes() == b.tobytes() for a, b in zip(resumed, full)):
            mismatched.append(f"{name}/{dtype}")
        assert all(np.all(np.isfinite(p)) for p in full)
    with np.load(jobs[-1]["out"], allow_pickle=False) as out:
        resumed = [out[f"arr_{j}"] for j in range(len(SHAPES))]
    if not all(a.tobytes() == b.tobytes() for a, b in zip(resumed, expected["sched"][0])):
        mismatched.append("adam/float32 with scheduled lr and weight_decay")
    print(f"resume checked bit for bit: {len(CASES)} rule×dtype cases ({len(ELEMENTWISE)} rules × 2 dtypes)")
    assert not mismatched, f"resumed runs differ from uninterrupted ones: {mismatched}"


def _adam(dtype=np.float64, shapes=SHAPES, steps=3, rng=None):
    rng = rng or np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    opt = symopt.optimizer("adam", params, lr=0.01)
    for _ in range(steps):
        opt.step([rng.standard_normal(p.shape).astype(dtype) for p in params])
    return params, opt


def test_method_forms_and_in_place_load(tmp_path):
    params, opt = _adam()
    path = tmp_path / "ck.npz"
    symopt.save(path, opt)
    other = [np.zeros_like(p) for p in params]
    opt2 = symopt.optimizer("adam", other, lr=0.5)
    symopt.runtime.checkpoint.load_into(opt2, path)
    assert opt2.param_groups[0]["lr"] == 0.01 and all(np.array_equal(a, b) for a, b in zip(params, other))
    assert opt2.state[0]["step"] == 3
    opt.save(tmp_path / "m.npz")
    third = [np.zeros_like(p) for p in params]
    opt3 = symopt.optimizer("adam", third)
    opt3.load(tmp_path / "m.npz")
    assert opt3.state[1]["step"] == 3 and all(np.array_equal(a, b) for a, b in zip(params, third))
    assert not any(f.name.endswith(".tmp") for f in tmp_path.iterdir()), "temporary checkpoint file left behind"


def _unchanged(params, before):
    return all(a.tobytes() == b.tobytes() for a, b in zip(params, before))


@pytest.mark.parametrize("case,exc,match", [
    ("other rule", CheckpointError, "holds the state of rule 'adam', not 'sgd'"),
    ("other shape", CheckpointError, r"param 1 has shape \(5,\) in the checkpoint, got an array of shape \(6,\)"),
    ("other dtype", TypeError, "holds float64 state, the params are float32"),
    ("fewer params", CheckpointError, "holds 2 params, got 1"),
    ("other variant", CheckpointError, "variant 'adam' of 'adam', the optimizer runs 'adam.amsgrad'"),
])
def test_loading_into_something_else_fails_clearly(tmp_path, case, exc, match):
    params, opt = _adam()
    path = tmp_path / "ck.npz"
    symopt.save(path, opt)
    if case == "other rule":
        target = [np.ones_like(p) for p in params]
        before = [p.copy() for p in target]
        with pytest.raises(exc, match=match):
            symopt.load(path, target, "sgd")
    elif case in ("other shape", "fewer params", "other dtype"):
        target = {"other shape": [np.ones((3, 4)), np.ones(6)], "fewer params": [np.ones((3, 4))],
                  "other dtype": [np.ones(s, np.float32) for s in SHAPES]}[case]
        before = [p.copy() for p in target]
        with pytest.raises(exc, match=match):
            symopt.load(path, target)
    else:
        target = [np.ones_like(p) for p in params]
        before = [p.copy() for p in target]
        opt2 = symopt.optimizer("adam", target, amsgrad=True)
        state_before = {k: v.copy() for k, v in opt2.state[0].items() if isinstance(v, np.ndarray)}
        with pytest.raises(exc, match=match):
            symopt.runtime.checkpoint.load_into(opt2, path)
        assert all(np.array_equal(opt2.state[0][k], v) for k, v in state_before.items())
    assert _unchanged(target, before), "a failed load modified the params"


def _heavy_ball(dampened: bool):
    p, g, m = sp.symbols("p g m")
    lr, beta = sp.symbols("lr beta")
    step = (1 - beta) * g if dampened else g
    return symopt.Rule("resume_heavy_ball", param=p, grad=g, state={m: 0}, hyper={lr: 0.1, beta: 0.9},
                       updates=[(m, beta * m + step), (p, p - lr * m)])


def test_changed_formula_of_a_user_rule_is_refused(tmp_path):
    rule = _heavy_ball(False)
    params = [np.ones(4)]
    opt = symopt.optimizer(rule, params)
    opt.step([np.ones(4)])
    path = tmp_path / "ck.npz"
    symopt.save(path, opt)
    with pytest.raises(CheckpointError, match="user rule 'resume_heavy_ball'; pass it again"):
        symopt.load(path, [np.zeros(4)])
    resumed = symopt.load(path, [np.zeros(4)], rule)
    assert resumed.state[0]["step"] == 1
    target = [np.full(4, 7.0)]
    with pytest.raises(CheckpointError, match="different formula of 'resume_heavy_ball'"):
        symopt.load(path, target, _heavy_ball(True))
    assert np.all(target[0] == 7.0)


@pytest.mark.parametrize("corrupt,match", [
    ("not a zip", "not a readable .npz"),
    ("no meta", "has no 'meta' entry"),
    ("pickled meta", "'meta' must be a 0-d string array"),
    ("bad json", "'meta' is not JSON"),
    ("wrong state dtype", r"state 'exp_avg' of param 0 is float32\[3, 4\], expected float64\[3, 4\]"),
    ("missing state", "state 'exp_avg_sq' of param 1 is missing"),
    ("negative step", "non-negative int64 step counts"),
    ("nan hyper", "'lr' must be finite"),
])
def test_malformed_checkpoints_are_refused(tmp_path, corrupt, match):
    params, opt = _adam()
    path = tmp_path / "ck.npz"
    symopt.save(path, opt)
    with np.load(path, allow_pickle=False) as d:
        files = {k: d[k] for k in d.files}
    meta = json.loads(str(files["meta"][()]))
    if corrupt == "not a zip":
        path.write_bytes(b"import os; os.system('touch canary')\n")
    else:
        if corrupt == "no meta":
            del files["meta"]
        elif corrupt == "pickled meta":
            files["meta"] = np.array([meta], dtype=object)
        elif corrupt == "bad json":
            files["meta"] = np.array("{not json")
        elif corrupt == "wrong state dtype":
            files["state_0_0"] = files["state_0_0"].astype(np.float32)
        elif corrupt == "missing state":
            del files["state_1_1"]
        elif corrupt == "negative step":
            files["step"] = -files["step"]
        elif corrupt == "nan hyper":
            meta["groups"][0]["hyper"]["lr"] = float("nan")
            files["meta"] = np.array(json.dumps(meta))
        with open(path, "wb") as fh:
            np.savez(fh, **files)
    target = [np.full(s, 3.0) for s in SHAPES]
    with pytest.raises((ValueError, TypeError), match=match):
        symopt.load(path, target)
    assert all(np.all(p == 3.0) for p in target)
    assert not (tmp_path / "canary").exists()
