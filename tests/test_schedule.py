"""Schedules: values equal torch.optim.lr_scheduler's, Optax's and pytorch-optimizer's, and
a scheduled optimizer steps exactly as one whose lr is set by hand every step, also across
a state_dict resume, with no recompilation.

Step convention: symopt's step t (1-based) uses the library's value after k = t − 1
scheduler steps (torch: read ``param_groups[0]["lr"]`` before ``opt.step()``, then
``scheduler.step()``; Optax: ``schedule(count=k)``).  Tolerance: |ours − theirs| ≤ 1e-12 ×
the schedule's largest value (torch's chainable schedulers update the lr recursively, so
their rounding grows with the step count; relative to the peak it stays ~1e-15).
"""
import copy
import pickle

import numpy as np
import pytest

import symopt
from symopt import schedule as S

TOL = 1e-12


def _close(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    err = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    assert err <= TOL, err
    return err


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    return torch


def _torch_values(torch, base_lr, make_scheduler, steps):
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        p.grad = torch.zeros_like(p)
        opt.step()
        sched.step()
    return out


TORCH = [
    ("linear", lambda: S.linear(0.1, 1.0, 30), 1.0,
     lambda L: lambda o: L.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=30), 60),
    ("step", lambda: S.step(0.5, 7, 0.3), 0.5, lambda L: lambda o: L.StepLR(o, step_size=7, gamma=0.3), 50),
    ("exponential", lambda: S.exponential(0.5, 0.97), 0.5, lambda L: lambda o: L.ExponentialLR(o, gamma=0.97), 200),
    ("cosine", lambda: S.cosine(0.1, 500, floor=1e-4), 0.1,
     lambda L: lambda o: L.CosineAnnealingLR(o, T_max=500, eta_min=1e-4), 501),
    ("one_cycle", lambda: S.one_cycle(0.2, 300, pct_start=0.25, div_factor=10.0, final_div_factor=100.0), 0.2,
     lambda L: lambda o: L.OneCycleLR(o, max_lr=0.2, total_steps=300, pct_start=0.25, div_factor=10.0,
                                      final_div_factor=100.0, cycle_momentum=False), 300),
    ("inverse_sqrt", lambda: S.inverse_sqrt(1e-3, 40), 1e-3,
     lambda L: lambda o: L.LambdaLR(o, lambda k: min((k + 1) / 40, ((40 / (k + 1)) ** 0.5))), 400),
]


@pytest.mark.parametrize("name,make,base,sched,steps", TORCH, ids=[c[0] for c in TORCH])
def test_values_equal_torch_lr_scheduler(name, make, base, sched, steps, torch):
    ours = make().values(steps)
    theirs = _torch_values(torch, base, sched(torch.optim.lr_scheduler), steps)
    _close(ours, theirs)


@pytest.mark.parametrize("cooldown", ["1-sqrt", "linear", "1-square", "cosine"])
def test_warmup_stable_decay_equals_pytorch_optimizer(cooldown, torch):
    po = pytest.importorskip("pytorch_optimizer")
    from pytorch_optimizer.lr_scheduler.wsd import get_wsd_schedule

    s = S.warmup_stable_decay(2e-3, 20, 50, 40, min_lr_ratio=0.05, cooldown=cooldown)
    theirs = _torch_values(torch, 2e-3, lambda o: get_wsd_schedule(o, 20, 50, 40, min_lr_ratio=0.05,
                                                                   cooldown_type=cooldown), 130)
    _close(s.values(130), theirs)
    del po


def test_values_equal_optax():
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    cases = [
        (S.constant(3e-4), optax.constant_schedule(3e-4), 10),
        (S.linear(0.0, 1e-3, 25), optax.linear_schedule(0.0, 1e-3, 25), 60),
        (S.linear_warmup(1e-3, 25), optax.linear_schedule(0.0, 1e-3, 25), 60),
        (S.step(0.5, 7, 0.3), optax.exponential_decay(0.5, 7, 0.3, staircase=True), 60),
        (S.exponential(0.5, 0.97), optax.exponential_decay(0.5, 1, 0.97), 200),
        (S.cosine(1e-3, 400, warmup_steps=50, floor=1e-5, init=1e-6),
         optax.warmup_cosine_decay_schedule(1e-6, 1e-3, 50, 400, end_value=1e-5), 450),
        (S.cosine(1e-3, 400), optax.cosine_decay_schedule(1e-3, 400), 450),
    ]
    for ours, theirs, steps in cases:
        _close(ours.values(steps), [float(theirs(k)) for k in range(steps)])


def test_scheduled_optimizer_equals_manual_lr_and_resumes_exactly(rng):
    sched = S.cosine(0.05, 40, warmup_steps=8, floor=1e-3)
    params = [rng.standard_normal((4, 3)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(40)]
    a = [p.copy() for p in params]
    b = [p.copy() for p in params]
    opt_a = symopt.optimizer("adam", a, lr=sched, weight_decay=S.linear(0.0, 0.1, 40))
    opt_b = symopt.optimizer("adam", b, lr=1.0)
    kernel_sigs = None
    for t in range(1, 21):
        opt_a.step(grads[t - 1])
        opt_b.param_groups[0]["lr"] = sched(t)
        opt_b.param_groups[0]["weight_decay"] = 0.1 * min(t - 1, 40) / 40
        opt_b.step(grads[t - 1])
        kernel_sigs = len(opt_a._kernel_serial.signatures)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    # state_dict (deep-copied, pickled) into a fresh optimizer: the schedule continues from t = 21.
    sd = pickle.loads(pickle.dumps(copy.deepcopy(opt_a.state_dict())))
    c = [x.copy() for x in a]
    opt_c = symopt.optimizer("adam", c, lr=1.0)
    opt_c.load_state_dict(sd)
    for t in range(21, 41):
        opt_a.step(grads[t - 1])
        opt_c.step(grads[t - 1])
    for x, y in zip(a, c):
        assert np.array_equal(x, y)
    assert len(opt_a._kernel_serial.signatures) == kernel_sigs  # no recompilation


def test_schedule_values_are_range_checked_before_any_change():
    p = np.ones(3)
    opt = symopt.optimizer("notes.gd", [p], lr=S.expr(1 - symopt.t / 3))
    opt.step([np.ones(3)])
    opt.step([np.ones(3)])
    opt.step([np.ones(3)])          # t = 3: lr = 0
    before = p.copy()
    with pytest.raises(ValueError, match="schedule at step t=4"):
        opt.step([np.ones(3)])
    assert np.array_equal(p, before)
    with pytest.raises(ValueError, match="schedule at t=1"):
        symopt.optimizer("notes.gd", [np.ones(3)], lr=S.expr(-symopt.t))
    with pytest.raises(ValueError, match="only use symopt.t"):
        import sympy as sp

        S.expr(sp.Symbol("x") * symopt.t)


def test_show_prints_latex_and_plots(tmp_path, capsys):
    from symopt.cli import main

    png = tmp_path / "cos.png"
    assert main(["show", "schedule.cosine", "peak=1e-3", "total_steps=200", "warmup_steps=20",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "\\eta_{t}" in out and "\\cos" in out
    assert png.stat().st_size > 5000
    assert main(["show", "schedule.nope"]) == 2
