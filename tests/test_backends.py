"""The PyTorch and JAX backends: the same rule, printed as torch / jax.numpy code, steps like the Numba kernel.

Table-driven over ``tests/rule_db.py``: every built-in rule (defaults and its reference
cases: every variant), a composed rule with global and tensor reductions, a user rule and a
scheduled learning rate run 100 steps through the Numba kernels (``symopt.optimizer`` over
NumPy arrays, the reference) and through

* the torch backend, eager (``symopt.torch.Optimizer(..., backend="torch")``), on the CPU
  and, in the tests marked ``cuda``, on a CUDA device;
* the torch backend compiled (``compile=``): every variant through dynamo in one graph
  (``fullgraph=True``, AOTAutograd's ``aot_eager``: the graph Inductor would lower, run by
  eager kernels) and, for :data:`INDUCTOR_CASES` (every torch function and operator the
  generated steps use, every template branch), through Inductor's C++ (Triton on CUDA);
* the JAX backend (``symopt.jax.transform``): the 100 steps as one ``jax.lax.scan`` under
  ``jax.jit`` (one trace per case);

with the same gradients (computed from the Numba trajectory), and the params are compared
after the last step with ``conftest.rel_err`` (max-norm): float64 ≤ 1e-9, float32 ≤ 1e-4.
The factored rules (``rule_db.FACTORED``: adafactor, adafactor_optax) run the same comparisons
on params of every layout (2-D and 3-D stacks of matrices, a matrix too small to factor, 1-D and
0-d params).  torch-compatible rules also match ``torch.optim`` through the torch backend (the
table's torch cases), and Optax-defined rules match Optax through the JAX backend.
"""
import functools
import types

import numpy as np
import pytest
import sympy as sp
from conftest import rel_err
from rule_db import ELEMENTWISE, FACTORED, PRECONDITIONED, RULE_DB, peer_cases, peer_grads, peer_problem

import symopt
from symopt.generated import jax as generated_jax
from symopt.generated import torch as generated_torch

torch = pytest.importorskip("torch")
from symopt.torch import Optimizer, TensorOptimizer  # noqa: E402

STEPS = 100
TOL = {np.float64: 1e-9, np.float32: 1e-4}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def _heavy_ball():
    p, g, m = sp.symbols("p g m")
    lr, beta = sp.symbols("lr beta")
    return symopt.Rule("heavy_ball", param=p, grad=g, state={m: 0}, hyper={lr: 1e-2, beta: 0.9},
                       updates=[(m, beta * m + g), (p, p - lr * m)])


def _composed():
    from symopt import transforms as T

    return symopt.compose("adam", T.cautious(), T.clip_global_norm(1.0))


#: (id, rule, keywords): every built-in elementwise rule (matrix rules: tests/test_matrix_backends.py)
#: with its defaults and its reference cases (variants).
CASES = [(name, name, {}) for name in ELEMENTWISE]
CASES += [(f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}", name, dict(kw))
          for name in ELEMENTWISE for kw in RULE_DB[name].reference_cases]
EXTRA = [("compose-adam-cautious-clip", _composed, {}), ("user-heavy_ball", _heavy_ball, {"lr": 0.05}),
         ("adamw-cosine-schedule", "adamw", {"lr": "cosine"})]


def _kwargs(kw):
    if kw.get("lr") == "cosine":
        return {**kw, "lr": symopt.schedule.cosine(1e-2, total_steps=STEPS, warmup_steps=10)}
    return kw


def numba_trajectory(rule, kw, dtype, seed=0):
    """The Numba kernels' run: ``(theta0, grads, params after STEPS)`` (cached for built-in rules:
    the torch and JAX tests share it)."""
    if isinstance(rule, str):
        return _numba_cached(rule, tuple(sorted(kw.items())), dtype, seed)
    return _numba_run(rule, kw, dtype, seed)


@functools.lru_cache(maxsize=None)
def _numba_cached(rule, kw_items, dtype, seed):
    return _numba_run(rule, dict(kw_items), dtype, seed)


def _numba_run(rule, kw, dtype, seed):
    theta0, target, curv, noise = peer_problem(seed)
    params = [x.astype(dtype) for x in theta0]
    opt = symopt.optimizer(rule, params, **kw)
    grads = []
    for t in range(STEPS):
        g = [x.astype(dtype) for x in peer_grads(params, target, curv, noise[t])]
        grads.append(g)
        opt.step(g)
    return [x.astype(dtype) for x in theta0], grads, params


def torch_run(rule, kw, dtype, theta0, grads, device="cpu", **options):
    params = [torch.tensor(x, dtype=TORCH_DTYPE[dtype], device=device) for x in theta0]
    opt = Optimizer(rule, params, backend="torch", **kw, **options)
    assert isinstance(opt, TensorOptimizer) and isinstance(opt, Optimizer)
    for g in grads:
        for p, x in zip(params, g):
            p.grad = torch.tensor(x, device=device)
        opt.step()
    return params, opt


def _check_torch(rule, kw, dtype, device, **options):
    theta0, grads, ours = numba_trajectory(rule, kw, dtype)
    params, _ = torch_run(rule, kw, dtype, theta0, grads, device=device, **options)
    err = max(rel_err(p.cpu(), x, floor=1.0) for p, x in zip(params, ours))
    assert all(p.dtype == TORCH_DTYPE[dtype] for p in params)
    assert err <= TOL[dtype], f"torch backend vs Numba: {err:.3e}"


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _device(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False")
    return device


#: Every case in float64; float32 for the defaults of every rule (the variants' float32 code is the same text).
TABLE = [(c, np.float64) for c in CASES] + [(c, np.float32) for c in CASES if not c[2]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,dtype", TABLE, ids=[f"{c[0]}-{np.dtype(d).name}" for c, d in TABLE])
def test_torch_backend_matches_numba(case, dtype, device):
    _check_torch(case[1], case[2], dtype, _device(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make,kw", [c[1:] for c in EXTRA], ids=[c[0] for c in EXTRA])
def test_torch_backend_composed_user_scheduled(make, kw, device):
    dtype = np.float64
    rule = make() if callable(make) else make
    _check_torch(rule, _kwargs(kw), dtype, _device(device))


# ----------------------------------------------------------------------------- compiled torch
def _check_compiled(rule, kw, dtype, backend, device="cpu"):
    """100 compiled steps against the Numba trajectory; the whole run is one dynamo graph
    (``fullgraph=True``: no graph break; one frame compiled: no recompilation across steps)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend(backend)
    _check_torch(rule, kw, dtype, device, compile={"backend": counter, "fullgraph": True})
    assert counter.frame_count == 1, f"{counter.frame_count} graphs compiled in {STEPS} steps"


def _variant(rule, kw):
    return symopt.optimizer(rule, [np.zeros(2)], **kw).variant


#: One case per variant (distinct generated step function) of every rule: the cases that share a
#: variant compile the same graph (hyperparameters and flags are data), which the eager table runs.
VARIANT_CASES = list({_variant(c[1], c[2]): c for c in reversed(CASES)}.values())[::-1]


def test_variant_cases_cover_every_generated_step():
    """The compiled table reaches every variant of every elementwise rule (each generated step function)."""
    from symopt.runtime import kernels

    every = {v["name"] for name in ELEMENTWISE for v in kernels.load(name).FAMILY["variants"]}
    assert every == {_variant(c[1], c[2]) for c in VARIANT_CASES}


@pytest.mark.parametrize("case", VARIANT_CASES, ids=[c[0] for c in VARIANT_CASES])
def test_compiled_graph_matches_numba(case):
    """Every variant of every rule through dynamo and AOTAutograd (the functionalized graph
    Inductor lowers) run by ``aot_eager``, float64: each generated step is captured whole and its
    100 compiled steps agree with Numba."""
    _check_compiled(case[1], case[2], np.float64, "aot_eager")


@pytest.mark.parametrize("make,kw", [c[1:] for c in EXTRA], ids=[c[0] for c in EXTRA])
def test_compiled_graph_composed_user_scheduled(make, kw):
    rule = make() if callable(make) else make
    _check_compiled(rule, _kwargs(kw), np.float64, "aot_eager")


#: The cases compiled by Inductor (C++ on this CPU: 2-3 s of g++ per graph, so not all 50 variants):
#: together they hold every torch function and operator the generated step modules use
#: (``test_inductor_cases_cover_every_generated_op`` keeps it so) and every template branch: plain
#: elementwise, ``torch.where`` of Piecewise/flags, per-tensor reductions (cautious_lion, lamb)
#: and global reductions (the composed rule's clip_global_norm).
INDUCTOR_CASES = ["adam-lr=0.01-amsgrad=True-weight_decay=0.1-maximize=True", "adopt", "cautious_lion", "diffgrad",
                  "madgrad", "lamb", "compose-adam-cautious-clip"]
#: float32 for the cases whose float32 code Inductor writes differently (vectorized transcendental
#: functions, float32 reductions); every case in float64.
INDUCTOR_TABLE = [(c, np.float64) for c in INDUCTOR_CASES] + [
    (c, np.float32) for c in INDUCTOR_CASES[:1] + ["cautious_lion", "diffgrad", "madgrad"]]


def _case(case_id):
    found = [c for c in CASES + EXTRA if c[0] == case_id]
    assert found, f"no case {case_id!r}"
    return found[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case_id,dtype", INDUCTOR_TABLE, ids=[f"{c}-{np.dtype(d).name}" for c, d in INDUCTOR_TABLE])
def test_inductor_compiled_matches_numba(case_id, dtype, device):
    """Inductor's code (C++ on the CPU, Triton on CUDA), 100 steps against Numba."""
    _, make, kw = _case(case_id)
    rule = make() if callable(make) else make
    _check_compiled(rule, _kwargs(kw), dtype, "inductor", _device(device))


def _generated_ops(rule, kw):
    """The torch functions (``torch.<name>``) and Python operators in the step function that
    ``rule`` with keywords ``kw`` runs, read from the generated module's syntax tree."""
    import ast
    import inspect

    opt = Optimizer(rule, [torch.zeros(2, dtype=torch.float64)], backend="torch", **kw)
    tree = ast.parse(inspect.getsource(opt._step_fn))
    ops = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            ops.add(f"torch.{node.func.attr}")
        elif isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Compare)):
            op = node.ops[0] if isinstance(node, ast.Compare) else node.op
            ops.add(type(op).__name__)
    return ops


def test_inductor_cases_cover_every_generated_op():
    """Every torch function and operator in any generated step runs through Inductor in the table above."""
    def ops_of(cases):
        return set().union(*(_generated_ops(make() if callable(make) else make, _kwargs(kw)) for _, make, kw in cases))

    covered = ops_of([_case(c) for c in INDUCTOR_CASES])
    missing = ops_of(CASES) - covered
    assert not missing, f"no Inductor case runs {sorted(missing)}: add a case that does to INDUCTOR_CASES"


#: torch.optim's cases of the rules with a generated torch module (elementwise and factored: adafactor).
TORCH_CASES = [(info, k, case, d) for info, k, case in peer_cases("torch") if info.name in generated_torch.RULES
               for d in case.dtypes]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("info,k,case,dtype", TORCH_CASES,
                         ids=[f"{i.name}-{k}-{np.dtype(d).name}" for i, k, _, d in TORCH_CASES])
def test_torch_backend_matches_torch_optim(info, k, case, dtype, device):
    """The torch backend against torch.optim, through ``test_torch_parity``'s runner (groups,
    mid-run changes, final state under torch's names)."""
    import test_torch_parity as tp

    device = _device(device)

    class OnDevice:  # symopt.optimizer's calling convention, stepping the torch backend
        def __init__(self, name, groups, **kw):
            self.tensors = []
            tgroups = []
            for g in (groups if isinstance(groups[0], dict) else [{"params": groups}]):
                ts = [torch.tensor(a, device=device) for a in g["params"]]
                self.tensors.append((g["params"], ts))
                tgroups.append({**g, "params": ts})
            self.opt = Optimizer(name, tgroups, backend="torch", **kw)
            self.param_groups = self.opt.param_groups
            self.flat = [a for arrays, _ in self.tensors for a in arrays]
            self.ts = [t for _, ts in self.tensors for t in ts]

        def step(self, grads):
            for t, g in zip(self.ts, grads):
                t.grad = torch.tensor(g, device=device)
            self.opt.step()
            for a, t in zip(self.flat, self.ts):
                a[...] = t.detach().cpu().numpy()

        @property
        def state(self):
            out = {}
            for j, t in enumerate(self.ts):
                entry = self.opt.state[t]
                out[j] = {key: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for key, v in entry.items()}
            return out

    worst, state_err, _, _ = _run_with(tp, info.name, case, dtype, k, OnDevice)
    tol = info.tolerance["peer"][dtype]
    assert worst <= tol and state_err <= tol, f"{info.name}: params {worst:.3e}, state {state_err:.3e}"


def _run_with(tp, name, case, dtype, seed, factory):
    """``test_torch_parity.run_parity`` with ``symopt.optimizer`` replaced by ``factory``."""
    original = tp.symopt
    tp.symopt = types.SimpleNamespace(optimizer=factory)
    try:
        return tp.run_parity(name, case, dtype, seed)
    finally:
        tp.symopt = original


# ----------------------------------------------------------------------------- torch specifics
def _adam_setup(dtype=torch.float32, **options):
    torch.manual_seed(0)
    params = [torch.randn(5, 3, dtype=dtype), torch.randn(4, dtype=dtype)]
    return params, Optimizer("adam", params, backend="torch", **options)


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("policy", ["raise", "skip", "ignore"])
def test_nonfinite_policy_writes_nothing(policy, mode):
    """A NaN gradient: ``raise`` raises and ``skip`` skips, with params, state and step untouched;
    ``ignore`` writes the NaN through (as torch.optim)."""
    from torch._dynamo.testing import CompileCounter

    options = {"compile": {"backend": CompileCounter()}} if mode == "compiled" else {}
    params, opt = _adam_setup(on_nonfinite=policy, **options)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    before = [p.clone() for p in params]
    state = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in opt.state[p].items()} for p in params]
    params[1].grad = torch.tensor([1.0, float("nan"), 2.0, 3.0])
    if policy == "raise":
        with pytest.raises(symopt.NonFiniteGradientError, match="1 gradient value"):
            opt.step()
    else:
        opt.step()
    if policy == "ignore":
        assert torch.isnan(params[1]).any()
        return
    assert opt.skipped_steps == (1 if policy == "skip" else 0)
    for p, b, s in zip(params, before, state):
        assert torch.equal(p, b)
        assert opt.state[p]["step"] == s["step"] == 1
        assert all(torch.equal(opt.state[p][k], s[k]) for k in ("exp_avg", "exp_avg_sq"))


def test_compiled_step_never_recompiles_for_lr_schedules_or_steps():
    """Two param groups, float32 and float64 params, ``lr`` changed every step in one group and a
    symopt.schedule in the other: the whole step is one dynamo graph, compiled once and never
    again (torch._dynamo's counters: one frame, no recompilation, no graph break)."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    counters.clear()
    counter = CompileCounter()
    torch.manual_seed(0)
    params = [torch.randn(5, 3), torch.randn(4, dtype=torch.float64), torch.randn(6),
              torch.randn(2, dtype=torch.float64)]
    cosine = symopt.schedule.cosine(1e-2, total_steps=10, warmup_steps=3)
    opt = Optimizer("adamw", [{"params": params[:2]}, {"params": params[2:], "lr": cosine}], backend="torch",
                    compile={"backend": counter})
    for t in range(8):
        opt.param_groups[0]["lr"] = 1e-3 * (t + 1)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert counter.frame_count == 1
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert all(opt.state[p]["step"] == 8 for p in params)


def test_inductor_compiled_matches_eager():
    """``compile=True`` (Inductor) computes the eager trajectory (float32, 20 steps with an lr change)."""
    torch.manual_seed(1)
    grads = [[torch.randn(5, 3), torch.randn(4)] for _ in range(20)]
    results = []
    for compiled in (False, True):
        params, opt = _adam_setup(compile=compiled)
        for t, g in enumerate(grads):
            if t == 10:
                opt.param_groups[0]["lr"] = 3e-3
            for p, x in zip(params, g):
                p.grad = x.clone()
            opt.step()
        results.append(params)
    assert max(rel_err(a, b, floor=1.0) for a, b in zip(*results)) <= 1e-6


def _float64_reference(rule, p, **kw):
    """A float64 Numba optimizer over a copy of ``p`` and ``step(p, g)``: its new param from
    ``p``'s current values (re-read every step) and the float64 state, as float64 tensors."""
    ref = [p.detach().double().numpy().copy()]
    opt = symopt.optimizer(rule, ref, **kw)

    def step(p, g):
        ref[0][...] = p.detach().double().numpy()
        opt.step([g.double().numpy()])
        return torch.from_numpy(ref[0].copy())
    return step


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("state_dtype", [None, torch.float64])
def test_low_precision_params_round_to_nearest(dtype, state_dtype):
    """bf16/f16 params, float32 arithmetic: every step writes the float64 result (computed from the
    same low-precision params and gradients, float64 state) rounded to nearest, up to float32's
    error (an element within it of a midpoint may round either way); the state is kept in
    ``state_dtype`` (default float32)."""
    torch.manual_seed(2)
    params = [(torch.randn(4096) * 3).to(dtype)]
    opt = Optimizer("adamw", params, lr=1e-2, weight_decay=0.1, state_dtype=state_dtype)  # auto: torch backend
    assert isinstance(opt, TensorOptimizer)
    reference = _float64_reference("adamw", params[0], lr=1e-2, weight_decay=0.1)
    ties = 0
    for _ in range(5):
        params[0].grad = torch.randn(4096).to(dtype)
        expected = reference(params[0], params[0].grad)
        opt.step()
        got, nearest = params[0].double(), expected.to(dtype).double()
        assert params[0].dtype == dtype
        assert bool(((got - expected).abs() <= (nearest - expected).abs() + 1e-6 * expected.abs()).all())
        ties += int((got != nearest).sum())
    assert ties <= 5, f"{ties} of {5 * 4096} values not the nearest {dtype}"
    assert all(v.dtype == (state_dtype or torch.float32) for k, v in opt.state[params[0]].items() if k != "step")


def test_bfloat16_stochastic_rounding_is_seeded_and_unbiased():
    """``stochastic_rounding=seed``: reproducible, and each value rounds to one of its two bf16
    neighbours, up with probability (y − lo)/(hi − lo) for the float64 result y (checked over 20000
    copies of one value, within 5 binomial standard deviations)."""
    n = 20000
    x0, g0 = torch.tensor(1.2345).bfloat16(), torch.tensor(0.377).bfloat16()
    expected = _float64_reference("adam", torch.full((1,), float(x0)), lr=1e-2)(
        torch.full((1,), float(x0)), torch.full((1,), float(g0)))[0].item()
    bits = torch.tensor(expected, dtype=torch.float32).view(torch.int32) & -65536  # y > 0: lo ≤ y < hi
    lo, hi = bits.view(torch.float32).bfloat16(), (bits + 65536).view(torch.float32).bfloat16()
    assert lo.double() < expected < hi.double()
    runs = []
    for _ in range(2):
        ps = [torch.full((n,), float(x0), dtype=torch.bfloat16)]
        opt = Optimizer("adam", ps, lr=1e-2, stochastic_rounding=7)
        ps[0].grad = torch.full((n,), float(g0), dtype=torch.bfloat16)
        opt.step()
        runs.append(ps[0].clone())
    assert torch.equal(runs[0], runs[1])
    got = runs[0]
    assert bool(((got == lo) | (got == hi)).all())
    up = (expected - lo.double().item()) / (hi.double().item() - lo.double().item())
    frac = float((got == hi).double().mean())
    assert abs(frac - up) <= 5 * (up * (1 - up) / n) ** 0.5 + 1e-4, f"rounded up {frac:.4f}, expected {up:.4f}"


def test_auto_backend_choice():
    cpu32 = [torch.zeros(3, requires_grad=True)]
    assert not isinstance(Optimizer("adam", cpu32), TensorOptimizer)
    # a dense layout (channels_last) stays on the Numba kernels, stepped in place; a view with gaps does not
    assert not isinstance(Optimizer("adam", [torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last)]),
                          TensorOptimizer)
    assert isinstance(Optimizer("adam", [torch.zeros(4, 6)[:, ::2]]), TensorOptimizer)
    assert isinstance(Optimizer("adam", [torch.zeros(3, dtype=torch.float16)]), TensorOptimizer)
    assert isinstance(Optimizer("adam", cpu32, compile=False), TensorOptimizer)
    with pytest.raises(TypeError, match="torch backend only"):
        Optimizer("adam", cpu32, backend="numba", compile=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        Optimizer("adam", cpu32, backend="cuda")


def test_channels_last_params_keep_their_layout():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 4, 5)
    cl = [x.clone().to(memory_format=torch.channels_last)]
    dense = [x.clone()]
    a, b = Optimizer("adamw", cl, lr=1e-2), Optimizer("adamw", dense, lr=1e-2)
    g = torch.randn(2, 3, 4, 5)
    for _ in range(3):
        cl[0].grad, dense[0].grad = g.to(memory_format=torch.channels_last), g.clone()
        a.step()
        b.step()
    assert cl[0].is_contiguous(memory_format=torch.channels_last)
    assert rel_err(cl[0], dense[0], floor=1.0) <= 1e-6


@pytest.mark.parametrize("direction", ["numba->torch", "torch->numba"])
def test_state_dict_moves_between_backends(direction):
    """The same torch-format state_dict: a checkpoint of one backend resumes in the other (torch's
    default dtype float64, so that NAdam's scalar ``mu_product`` keeps float64 in the dict)."""
    import test_torch_parity as tp

    with tp.torch_default_dtype(np.float64):
        _resume_across(direction)


def _resume_across(direction):
    torch.manual_seed(4)
    first, second = direction.split("->")
    init = [torch.randn(5, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    grads = [[torch.randn_like(p) for p in init] for _ in range(10)]
    ref = [p.clone() for p in init]
    opt_ref = Optimizer("nadam", ref, backend=first, lr=1e-2)
    for g in grads:
        for p, x in zip(ref, g):
            p.grad = x.clone()
        opt_ref.step()
    a = [p.clone() for p in init]
    opt_a = Optimizer("nadam", a, backend=first, lr=1e-2)
    for g in grads[:5]:
        for p, x in zip(a, g):
            p.grad = x.clone()
        opt_a.step()
    sd = opt_a.state_dict()
    b = [p.clone() for p in a]
    opt_b = Optimizer("nadam", b, backend=second, lr=1e-3)
    opt_b.load_state_dict(sd)
    assert opt_b.param_groups[0]["lr"] == 1e-2
    for g in grads[5:]:
        for p, x in zip(b, g):
            p.grad = x.clone()
        opt_b.step()
    assert max(rel_err(x, y) for x, y in zip(b, ref)) <= 1e-12


# ----------------------------------------------------------------------------- printers
def test_printed_text_is_pinned():
    """Golden text of the tensor printers (SymPy's printers change between versions: pinned)."""
    from symopt.codegen.printers import JaxArrayPrinter, TorchArrayPrinter

    x, y, s = sp.symbols("x y s", real=True)
    names = {x: "x", y: "y", s: "s0"}
    exprs = [sp.sqrt(x) * s, x**2 / y, sp.Max(x, y), sp.Max(x, sp.Float(1e-8)), sp.Min(x, 0),
             sp.Piecewise((x, x > 0), (y, True)), sp.Piecewise((x, s), (y, True)), sp.erf(x),
             (x > 0) & (y < 1), x ** sp.Rational(-1, 2), sp.Heaviside(x + y, 0)]
    torch_text = [
        "s0*torch.sqrt(x)", "(x * x)/y", "torch.maximum(x, y)", "torch.clamp(x, min=1e-08)",
        "torch.clamp(x, max=0.0)", "torch.where((x > 0.0), x, y)", "torch.where((s0 != 0.0), x, y)",
        "torch.erf(x)", "((x > 0.0) & (y < 1.0))", "(1.0 / torch.sqrt(x))",
        "torch.heaviside(x + y, torch.as_tensor(0.0, dtype=(x + y).dtype))",
    ]
    jax_text = [
        "s0*jnp.sqrt(x)", "(x * x)/y", "jnp.maximum(x, y)", "jnp.maximum(1e-08, x)", "jnp.minimum(0.0, x)",
        "jnp.where((x > 0.0), x, y)", "jnp.where((s0 != 0.0), x, y)", "special.erf(x)",
        "((x > 0.0) & (y < 1.0))", "(1.0 / jnp.sqrt(x))", "jnp.heaviside(x + y, 0.0)",
    ]
    assert [TorchArrayPrinter(names).doprint(e) for e in exprs] == torch_text
    assert [JaxArrayPrinter(names).doprint(e) for e in exprs] == jax_text
    with pytest.raises(Exception, match="acos"):
        TorchArrayPrinter(names).doprint(sp.acos(x))


# ----------------------------------------------------------------------------- JAX
@pytest.fixture(scope="module")
def jx():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    import symopt.jax  # noqa: F401  (symopt.jax for the tests below)

    yield jax
    jax.config.update("jax_enable_x64", old)


def jax_run(jax, rule, kw, theta0, grads, dtype=np.float64):
    """``(params after the steps, final state, the jitted run)``: ``init`` and every step of
    ``grads`` as one ``jax.lax.scan`` inside one ``jax.jit`` (one trace covers all steps)."""
    import jax.numpy as jnp

    import symopt.jax

    tx = symopt.jax.transform(rule, **kw)
    params = [jnp.asarray(x, dtype) for x in theta0]
    stacked = [jnp.asarray(np.stack([g[j] for g in grads])) for j in range(len(theta0))]

    @jax.jit
    def run(params, stacked):
        def one_step(carry, g):
            params, state = carry
            updates, state = tx.update(g, state, params)
            return (jax.tree.map(lambda p, u: p + u, params, updates), state), None

        (params, state), _ = jax.lax.scan(one_step, (params, tx.init(params)), stacked)
        return params, state

    params, state = run(params, stacked)
    return [np.asarray(p) for p in params], state, run


JAX_CASES = [(c, np.float64) for c in CASES] + [(c, np.float32) for c in CASES if not c[2]]


@pytest.mark.parametrize("case,dtype", JAX_CASES, ids=[f"{c[0]}-{np.dtype(d).name}" for c, d in JAX_CASES])
def test_jax_backend_matches_numba(jx, case, dtype):
    """100 steps under jax.jit, one trace (the scan's body is traced once for all steps)."""
    _, rule, kw = case
    theta0, grads, ours = numba_trajectory(rule, kw, dtype)
    params, state, run = jax_run(jx, rule, kw, theta0, grads, dtype=dtype)
    assert int(state.count) == STEPS and run._cache_size() == 1
    assert all(p.dtype == dtype for p in params)
    err = max(rel_err(p, x, floor=1.0) for p, x in zip(params, ours))
    assert err <= TOL[dtype], f"JAX backend vs Numba: {err:.3e}"


@pytest.mark.parametrize("make,kw", [c[1:] for c in EXTRA], ids=[c[0] for c in EXTRA])
def test_jax_backend_composed_user_scheduled(jx, make, kw):
    """100 steps of a composed rule, a user rule and a symopt.schedule (evaluated inside the update)."""
    rule = make() if callable(make) else make
    kw = _kwargs(kw)
    theta0, grads, ours = numba_trajectory(rule, kw, np.float64)
    params, _, _ = jax_run(jx, rule, kw, theta0, grads)
    assert max(rel_err(p, x, floor=1.0) for p, x in zip(params, ours)) <= TOL[np.float64]


#: Optax's cases with one set of hyperparameters (param-group cases are torch-style: a JAX transform has one set),
#: for the rules with a generated JAX module (elementwise and factored: adafactor_optax).
OPTAX_CASES = [(i, k, c) for i, k, c in peer_cases("optax")
               if c.group0 is None and c.change is None and i.name in generated_jax.RULES]


@pytest.mark.parametrize("info,k,case", OPTAX_CASES, ids=[f"{i.name}-{k}" for i, k, _ in OPTAX_CASES])
def test_jax_backend_matches_optax(jx, info, k, case):
    """Optax-defined rules: symopt.jax.transform steps as Optax's own transformation (100 steps,
    both in one ``jax.lax.scan`` under ``jax.jit``; the gradients are taken at Optax's params)."""
    import jax.numpy as jnp
    import optax

    theta0, target, curv, noise = peer_problem(k)
    ours = symopt.jax.transform(info.name, **case.kwargs)
    theirs = case.build(types.SimpleNamespace(optax=optax, jnp=jnp))
    stacked = [jnp.asarray(np.stack([n[j] for n in noise])) for j in range(len(theta0))]

    @jx.jit
    def run(p0):
        def one_step(carry, noise_t):
            p1, s1, p2, s2 = carry
            g = peer_grads(p2, target, curv, noise_t)
            u1, s1 = ours.update(g, s1, p1)
            u2, s2 = theirs.update(g, s2, p2)
            return (optax.apply_updates(p1, u1), s1, optax.apply_updates(p2, u2), s2), None

        (p1, _, p2, _), _ = jx.lax.scan(one_step, (p0, ours.init(p0), p0, theirs.init(p0)), stacked)
        return p1, p2

    p1, p2 = run([jnp.asarray(x) for x in theta0])
    err = max(rel_err(np.asarray(a), np.asarray(b), floor=1.0) for a, b in zip(p1, p2))
    assert err <= info.tolerance["peer"][np.float64], f"{info.name}: {err:.3e}"


def test_peer_tables_cover_every_torch_and_optax_rule():
    """Every rule with a generated torch module and torch.optim as its peer is in the
    torch-backend-vs-torch.optim table, every rule with a JAX module and Optax as a peer in the
    JAX-backend-vs-Optax table."""
    from symopt.provenance import RULE_PEERS

    for library, modules, table in (("torch", generated_torch.RULES, {i.name for i, *_ in TORCH_CASES}),
                                    ("optax", generated_jax.RULES, {i.name for i, *_ in OPTAX_CASES})):
        expected = {n for n in RULE_DB if n in modules and library in RULE_PEERS[n]}
        assert expected and expected <= table, f"{library}: no backend case for {sorted(expected - table)}"


#: The matrix rules whose torch and JAX modules tests/test_matrix_backends.py compares with Numba.
ITERATE_RULES = ("muon",)


def test_numba_tables_cover_every_generated_module():
    """Every rule with a generated torch or JAX module is compared with its Numba kernels: the
    elementwise tables above, the factored and preconditioned tables below, tests/test_matrix_backends.py
    (muon)."""
    covered = set(ELEMENTWISE) | set(FACTORED) | set(PRECONDITIONED) | set(ITERATE_RULES)
    for modules in (generated_torch.RULES, generated_jax.RULES):
        assert set(modules) == covered, sorted(set(modules) ^ covered)


def test_jax_injected_hyperparams_chain_grad_and_skip(jx):
    """lr changed in the state and an Optax schedule do not retrace; the transform chains with
    Optax's own; jax.grad drives it; a NaN gradient is skipped as optax.apply_if_finite does."""
    import jax.numpy as jnp
    import optax

    def loss(params, x):
        return jnp.sum((params["w"] * x - 1.0) ** 2)

    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     symopt.jax.transform("adamw", lr=optax.linear_schedule(1e-2, 1e-3, 50), weight_decay=0.1))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)

    @jx.jit
    def train_step(params, state, x):
        grads = jx.grad(loss)(params, x)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    x = jnp.asarray([0.5, 2.0, -1.0])
    first = loss(params, x)
    for _ in range(30):
        params, state = train_step(params, state, x)
    assert loss(params, x) < first
    assert train_step._cache_size() == 1

    single = symopt.jax.transform("adam", lr=1e-2)
    st = single.init(params)
    upd = jx.jit(single.update)
    _, st = upd({"w": jnp.ones(3)}, st, params)
    st.hyperparams["lr"] = jnp.full_like(st.hyperparams["lr"], 5e-3)
    u, st = upd({"w": jnp.ones(3)}, st, params)
    assert upd._cache_size() == 1
    bad_u, st2 = upd({"w": jnp.asarray([1.0, jnp.nan, 0.0])}, st, params)
    assert np.all(np.asarray(bad_u["w"]) == 0.0) and int(st2.count) == int(st.count) == 2
    assert int(st2.notfinite_count) == 1
    assert all(np.array_equal(a, b) for a, b in zip(jx.tree.leaves(st2.state), jx.tree.leaves(st.state)))
    with pytest.raises(ValueError, match="skip"):
        symopt.jax.transform("adam", on_nonfinite="raise")



def test_torch_backend_deepcopy_and_pickle_step_identically():
    import copy
    import pickle

    params, opt = _adam_setup(dtype=torch.float64, on_nonfinite="skip")
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        cparams = [p for g in clone.param_groups for p in g["params"]]
        for p, c in zip(params, cparams):
            c.grad = p.grad.clone()
        clone.step()
        assert clone.variant == "adam" and clone.on_nonfinite == "skip"
        assert all(clone.state[c]["step"] == 2 for c in cparams)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(torch.equal(p, c) for p, c in zip(params, cparams))


def test_params_without_gradients_keep_their_step_count():
    """A param whose .grad is None is not stepped; afterwards the params are at different steps
    (one batch of scalars per group and step count), as in the Numba-backed optimizer."""
    torch.manual_seed(5)
    init = [torch.randn(5, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    runs = []
    for backend in ("numba", "torch"):
        params = [p.clone() for p in init]
        opt = Optimizer("adam", [{"params": params[:1], "lr": 1e-2}, {"params": params[1:]}], backend=backend)
        gen = torch.Generator().manual_seed(6)
        for t in range(6):
            for j, p in enumerate(params):
                p.grad = None if (j == 1 and t < 3) else torch.randn(p.shape, generator=gen, dtype=torch.float64)
            opt.step()
        runs.append((params, [int(opt.state[p]["step"]) for p in params]))
    (a, steps_a), (b, steps_b) = runs
    assert steps_a == steps_b == [6, 3]
    assert max(rel_err(x, y) for x, y in zip(b, a)) <= 1e-12



# ----------------------------------------------------------------------------- factored rules
#: Every layout of a factored rule: stacks of matrices over the last two axes (2-D, 3-D), one whose two
#: largest axes are the first and last (adafactor_optax factors those, moved last as views), a matrix too
#: small to factor at min_dim_size_to_factor=3 (adafactor_optax; adafactor factors it), a vector and a 0-d param.
FACTORED_SHAPES = [(4, 6), (2, 3, 5), (5, 2, 6), (7,), (2, 2), ()]
FACTORED_STEPS = 30
#: (id, rule, keywords): the defaults and the peer cases with one set of hyperparameters of each factored rule.
FACTORED_CASES = [(name, name, {}) for name in FACTORED] + [
    (f"{name}-{'-'.join(f'{k}={v}' for k, v in case.kwargs.items())}", name, dict(case.kwargs))
    for name in FACTORED for case in RULE_DB[name].peer_cases if case.group0 is None and case.change is None]
FACTORED_TABLE = [(c, d) for c in FACTORED_CASES for d in (np.float64, np.float32)]


@functools.lru_cache(maxsize=None)
def _factored_numba(rule, kw_items, dtype):
    """``(theta0, grads, params after FACTORED_STEPS)`` of the Numba kernels: |θ₀| in [0.5, 2], gradients
    N(0, 1) scaled by 10^U(-2, 0) per element (so that row and column means differ)."""
    rng = np.random.default_rng(11)
    theta0 = [np.asarray(rng.uniform(0.5, 2.0, s) * rng.choice([-1.0, 1.0], s)).astype(dtype)
              for s in FACTORED_SHAPES]
    grads = [[np.asarray(rng.normal(size=s) * 10.0 ** rng.uniform(-2, 0, s)).astype(dtype) for s in FACTORED_SHAPES]
             for _ in range(FACTORED_STEPS)]
    params = [x.copy() for x in theta0]
    opt = symopt.optimizer(rule, params, **dict(kw_items))
    for g in grads:
        opt.step(g)
    return theta0, grads, params


def _check_factored_torch(case, dtype, **options):
    _, rule, kw = case
    theta0, grads, ours = _factored_numba(rule, tuple(sorted(kw.items())), dtype)
    params, opt = torch_run(rule, kw, dtype, theta0, grads, **options)
    err = max(rel_err(p.cpu().numpy(), x, floor=1.0) for p, x in zip(params, ours))
    assert err <= TOL[dtype], f"torch backend vs Numba: {err:.3e}"
    numba_state = symopt.optimizer(rule, [x.copy() for x in theta0], **kw).state
    for j, p in enumerate(params):  # each param keeps its layout's states, of their shapes (torch.optim.Adafactor's)
        assert {k: tuple(v.shape) for k, v in opt.state[p].items() if k != "step"} == {
            k: v.shape for k, v in numba_state[j].items() if k != "step"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,dtype", FACTORED_TABLE, ids=[f"{c[0]}-{np.dtype(d).name}" for c, d in FACTORED_TABLE])
def test_factored_torch_backend_matches_numba(case, dtype, device):
    _check_factored_torch(case, dtype, device=_device(device))


#: One case per factored rule that factors a matrix (adafactor_optax's defaults factor none of these shapes).
FACTORED_COMPILED = [next(c for c in FACTORED_CASES if c[1] == name and (name == "adafactor" or c[2]))
                     for name in FACTORED]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", FACTORED_COMPILED, ids=[c[0] for c in FACTORED_COMPILED])
def test_factored_compiled_graph_matches_numba(case, dtype):
    """dynamo + AOTAutograd (``aot_eager``), ``fullgraph=True``: the step over every layout is one graph,
    compiled once for all the steps, and agrees with Numba."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    _check_factored_torch(case, dtype, compile={"backend": counter, "fullgraph": True})
    assert counter.frame_count == 1, f"{counter.frame_count} graphs compiled in {FACTORED_STEPS} steps"


@pytest.mark.parametrize("device", DEVICES)
def test_factored_inductor_compiled_matches_numba(device):
    """Inductor's code (C++ on the CPU, Triton on CUDA) of adafactor's step over both layouts (keepdim sums
    along the last two axes, broadcasting row and column values), float64, against Numba."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("inductor")
    _check_factored_torch(FACTORED_COMPILED[0], np.float64, device=_device(device),
                          compile={"backend": counter, "fullgraph": True})
    assert counter.frame_count == 1


FACTORED_JAX = [(c, np.float64) for c in FACTORED_CASES] + [(c, np.float32) for c in FACTORED_COMPILED]


@pytest.mark.parametrize("case,dtype", FACTORED_JAX, ids=[f"{c[0]}-{np.dtype(d).name}" for c, d in FACTORED_JAX])
def test_factored_jax_backend_matches_numba(jx, case, dtype):
    """The steps as one ``jax.lax.scan`` under ``jax.jit`` (one trace); a state a leaf's layout does not keep
    is an empty array."""
    _, rule, kw = case
    theta0, grads, ours = _factored_numba(rule, tuple(sorted(kw.items())), dtype)
    params, state, run = jax_run(jx, rule, kw, theta0, grads, dtype=dtype)
    assert int(state.count) == FACTORED_STEPS and run._cache_size() == 1
    err = max(rel_err(p, x, floor=1.0) for p, x in zip(params, ours))
    assert err <= TOL[dtype], f"JAX backend vs Numba: {err:.3e}"
    numba_state = symopt.optimizer(rule, [x.copy() for x in theta0], **kw).state
    keys = [s["key"] for s in symopt.runtime.kernels.load(rule).FAMILY["variants"][0]["state"]]
    for k, key in enumerate(keys):
        assert [tuple(np.shape(x)) for x in state.state[k]] == [
            numba_state[j][key].shape if key in numba_state[j] else (0,) for j in range(len(theta0))]


def test_factored_jax_within_float32_of_optax_adafactor(jx):
    """Against ``optax.adafactor`` itself in float32 (its decay 1 − t^-0.8 in float32 too), on every
    layout: 2e-6 max-norm, as the Numba kernels (tests/test_adafactor.py: symopt sums the norms and the
    row/column means in float64, Optax in float32; Optax's float32 decay is why the float64 table above
    compares with its chain with a float64 decay)."""
    import jax.numpy as jnp
    import optax

    kw = dict(min_dim_size_to_factor=3, weight_decay_rate=0.01)
    theta0, grads, _ = _factored_numba("adafactor_optax", tuple(sorted({"lr": 0.05, **kw}.items())), np.float32)
    ours, theirs = symopt.jax.transform("adafactor_optax", lr=0.05, **kw), optax.adafactor(0.05, **kw)
    stacked = [jnp.asarray(np.stack([g[j] for g in grads])) for j in range(len(theta0))]

    @jx.jit
    def run(p0):
        def one_step(carry, g):
            p1, s1, p2, s2 = carry
            u1, s1 = ours.update(g, s1, p1)
            u2, s2 = theirs.update(g, s2, p2)
            return (optax.apply_updates(p1, u1), s1, optax.apply_updates(p2, u2), s2), None

        (p1, _, p2, _), _ = jx.lax.scan(one_step, (p0, ours.init(p0), p0, theirs.init(p0)), stacked)
        return p1, p2

    p1, p2 = run([jnp.asarray(x) for x in theta0])
    assert all(np.asarray(a).dtype == np.float32 for a in p1)
    err = max(rel_err(np.asarray(a), np.asarray(b), floor=1.0) for a, b in zip(p1, p2))
    assert err <= 2e-6, f"adafactor_optax vs optax.adafactor, float32: {err:.3e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_factored_low_precision_params(dtype):
    """bf16/f16 params through the torch backend: float32 arithmetic and state (row_var (…, m, 1),
    col_var (…, 1, n)), the param rounded to nearest after each step, and eps=(None, …) the machine
    epsilon of the param's dtype (as torch.optim.Adafactor): gradients of 1e-3 put v̂ under ε1², so each
    step is compared with a float64 step from the same params taking ε1 = finfo(dtype).eps."""
    torch.manual_seed(3)
    shapes = [(16, 12), (40,)]
    params = [(torch.randn(s) * 2).to(dtype) for s in shapes]
    opt = Optimizer("adafactor", params, lr=0.05)   # auto: the torch backend for low-precision params
    assert isinstance(opt, TensorOptimizer)
    eps1 = torch.finfo(dtype).eps
    references = [_float64_reference("adafactor", p, lr=0.05, eps=(eps1, 1e-3)) for p in params]
    for _ in range(5):
        for p in params:
            p.grad = (torch.randn(p.shape) * 1e-3).to(dtype)
        expected = [ref(p, p.grad) for ref, p in zip(references, params)]
        opt.step()
        for p, e in zip(params, expected):
            assert p.dtype == dtype
            # float32 against float64 arithmetic: a value within float32's error of a midpoint may round either way
            assert rel_err(p.double().numpy(), e.to(dtype).double().numpy(), floor=1.0) <= 2 * torch.finfo(dtype).eps
    assert {k: (tuple(v.shape), v.dtype) for k, v in opt.state[params[0]].items() if k != "step"} == {
        "row_var": ((16, 1), torch.float32), "col_var": ((1, 12), torch.float32)}
    assert {k: (tuple(v.shape), v.dtype) for k, v in opt.state[params[1]].items() if k != "step"} == {
        "variance": ((40,), torch.float32)}


def test_factored_min_dim_is_fixed_and_axes_follow_optax(jx):
    """adafactor_optax's min_dim_size_to_factor fixes each param's layout and state shapes: one value for
    every group, never changed after construction (torch), not traced (JAX); a param whose two largest axes
    are not its last two is factored over them, as Optax does (row state: the column axis 1)."""
    w = torch.ones(4, 4, dtype=torch.float64)
    opt = Optimizer("adafactor_optax", [w], backend="torch", min_dim_size_to_factor=3)
    w.grad = torch.full_like(w, 0.5)
    opt.step()
    opt.param_groups[0]["min_dim_size_to_factor"] = 8
    with pytest.raises(ValueError, match="min_dim_size_to_factor must be one number shared by every param group"):
        opt.step()
    w = torch.ones(5, 6, 3, dtype=torch.float64)
    opt = Optimizer("adafactor_optax", [w], backend="torch", min_dim_size_to_factor=3)
    w.grad = torch.full_like(w, 0.5)
    opt.step()
    assert {k: tuple(v.shape) for k, v in opt.state[w].items() if k != "step"} == {"v_row": (5, 1, 3),
                                                                                   "v_col": (1, 6, 3)}
    tx = symopt.jax.transform("adafactor_optax", min_dim_size_to_factor=3)
    assert "min_dim_size_to_factor" not in tx.init([jx.numpy.ones((4, 4))]).hyperparams
    v_row, v_col, v = tx.init([jx.numpy.ones((5, 6, 3))]).state
    assert (v_row[0].shape, v_col[0].shape, v[0].shape) == ((5, 1, 3), (1, 6, 3), (0,))
    with pytest.raises(TypeError, match="min_dim_size_to_factor fixes which params are factored"):
        symopt.jax.transform("adafactor_optax", min_dim_size_to_factor=lambda count: 3.0)


def test_factored_cli_shows_the_generated_modules(capsys):
    from symopt.cli import main

    assert main(["show", "adafactor", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "def adafactor_step(" in out and 'if layouts[j] == "matrix":' in out and "dim=-1, keepdim=True" in out
    assert main(["show", "adafactor_optax", "--backend", "jax"]) == 0
    out = capsys.readouterr().out
    assert "def adafactor_optax_scalars(" in out and "axis=-2, keepdims=True" in out
    assert main(["show", "shampoo", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "def shampoo_flags(" in out and "from torch import linalg" in out and "linalg.eigh(" in out
    assert main(["show", "soap", "--backend", "jax"]) == 0
    out = capsys.readouterr().out
    assert "def soap_scalars(" in out and "lax.cond(" in out and "linalg.qr(" in out


# ----------------------------------------------------------------------------- preconditioned rules
#: Params whose Kronecker statistics are full rank from the first step (a square matrix, a 3-D tensor with
#: no axis longer than the others' product), so that every eigenbasis is determined up to column signs
#: (which the updates do not see); a 1-D param (Shampoo preconditions it: matrix_eps·I plus one g gᵀ per
#: step, full rank from the third, float64 only; SOAP leaves it unrotated by default).  With merge_dims,
#: (2, 3, 6) merges to (6, 6).
PRECOND_SHAPES = {"shampoo": [(5, 5), (2, 3, 4), (3,)], "soap": [(5, 5), (2, 3, 4), (6,)]}
PRECOND_STEPS = 12
#: (id, rule, keywords, shapes): defaults (SOAP refreshes its bases at t = 11 by QR), frequent recomputation and
#: refreshes, every option of the update.
PRECOND_CASES = [
    ("shampoo", "shampoo", {}, PRECOND_SHAPES["shampoo"]),
    ("shampoo-decoupled-every3", "shampoo", dict(lr=1e-2, momentum=0.5, weight_decay=0.1, weight_decouple=True,
                                                 preconditioning_compute_steps=3, maximize=True),
     PRECOND_SHAPES["shampoo"]),
    ("soap", "soap", {}, PRECOND_SHAPES["soap"]),
    ("soap-every3", "soap", dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, precondition_frequency=3,
                                 maximize=True, shampoo_beta=0.8, correct_bias=False), PRECOND_SHAPES["soap"]),
    ("soap-normalized", "soap", dict(lr=1e-2, normalize_gradient=True, precondition_frequency=2),
     PRECOND_SHAPES["soap"]),
    ("soap-merged", "soap", dict(merge_dims=True, max_precondition_dim=6, precondition_frequency=2),
     [(5, 5), (2, 3, 6)]),
]
#: float64: the eigensolvers (LAPACK ?syevd through SciPy in Numba; torch.linalg.eigh, jnp.linalg.eigh and
#: their QR on the CPU: LAPACK too) agree to rounding on these statistics (measured ≤ 4e-16 of the params'
#: max-norm; 8e-11 on Shampoo's 1-D param, whose inverse 4th roots of eigenvalues near matrix_eps = 1e-12
#: amplify the rounding of its statistic: ?syrk there, a gemm here).  float32 (2-D and 3-D): measured ≤ 2e-7.
PRECOND_TOL = {np.float64: 1e-9, np.float32: 1e-5}
PRECOND_TABLE = [(c, np.float64) for c in PRECOND_CASES] + [
    ((f"{c[0]}-2d3d", c[1], c[2], c[3][:2]), np.float32) for c in PRECOND_CASES if c[0] in PRECONDITIONED]


@functools.lru_cache(maxsize=None)
def _precond_numba(rule, kw_items, shapes, dtype):
    """``(theta0, grads, params after PRECOND_STEPS, matrix state shapes per param)`` of the Numba kernels."""
    rng = np.random.default_rng(5)
    theta0 = [rng.uniform(0.5, 2.0, s).astype(dtype) for s in shapes]
    grads = [[rng.normal(size=s).astype(dtype) for s in shapes] for _ in range(PRECOND_STEPS)]
    params = [x.copy() for x in theta0]
    opt = symopt.optimizer(rule, params, **dict(kw_items))
    for g in grads:
        opt.step(g)
    assert all(np.isfinite(x).all() for x in params), "the reference trajectory is not finite"
    return theta0, grads, params, [{k: v.shape for k, v in opt.state[j].items() if k != "step"}
                                   for j in range(len(shapes))]


def _precond_torch(case, dtype, **options):
    _, rule, kw, shapes = case
    theta0, grads, ours, state_shapes = _precond_numba(rule, tuple(sorted(kw.items())), tuple(shapes), dtype)
    params, opt = torch_run(rule, kw, dtype, theta0, grads, **options)
    err = max(rel_err(p.cpu(), x, floor=1.0) for p, x in zip(params, ours))
    assert err <= PRECOND_TOL[dtype], f"torch backend vs Numba: {err:.3e}"
    # pytorch-optimizer's names, per kept axis (GG_0, Q_1...), as the Numba backend keeps them
    assert [{k: tuple(v.shape) for k, v in opt.state[p].items() if k != "step"} for p in params] == state_shapes
    return opt


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,dtype", PRECOND_TABLE, ids=[f"{c[0]}-{np.dtype(d).name}" for c, d in PRECOND_TABLE])
def test_preconditioned_torch_backend_matches_numba(case, dtype, device):
    _precond_torch(case, dtype, device=_device(device))


#: One case per rule with its matrix operations under per-step flags: (case, the graphs dynamo compiles, one
#: per combination of flags: Shampoo's recomputation on/off; SOAP's first step, refresh, neither).
PRECOND_COMPILED = [(PRECOND_CASES[1], 2), (PRECOND_CASES[3], 3)]


@pytest.mark.parametrize("case,graphs", PRECOND_COMPILED, ids=[c[0] for c, _ in PRECOND_COMPILED])
def test_preconditioned_compiled_graph_matches_numba(case, graphs):
    """dynamo + AOTAutograd (``aot_eager``), ``fullgraph=True``: torch.linalg.eigh, qr, argsort and
    index_select trace into one graph per combination of the host's flags, float64, against Numba."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    _precond_torch(case, np.float64, compile={"backend": counter, "fullgraph": True})
    assert counter.frame_count == graphs


#: JAX (a trace and an XLA compile each): Shampoo's recomputation under lax.cond, SOAP's refresh, its
#: normalization and merged axes in float64, SOAP in float32.
PRECOND_JAX = [(PRECOND_CASES[k], np.float64) for k in (1, 3, 4, 5)] + [
    (c, d) for c, d in PRECOND_TABLE if d == np.float32 and c[1] == "soap"]


@pytest.mark.parametrize("case,dtype", PRECOND_JAX, ids=[f"{c[0]}-{np.dtype(d).name}" for c, d in PRECOND_JAX])
def test_preconditioned_jax_backend_matches_numba(jx, case, dtype):
    """The steps as one ``jax.lax.scan`` under ``jax.jit`` (one trace; the decompositions under ``lax.cond``);
    each matrix state is a pytree of per-axis tuples (None for an axis without one)."""
    _, rule, kw, shapes = case
    theta0, grads, ours, state_shapes = _precond_numba(rule, tuple(sorted(kw.items())), tuple(shapes), dtype)
    params, state, run = jax_run(jx, rule, kw, theta0, grads, dtype=dtype)
    assert int(state.count) == PRECOND_STEPS and run._cache_size() == 1
    err = max(rel_err(p, x, floor=1.0) for p, x in zip(params, ours))
    assert err <= PRECOND_TOL[dtype], f"JAX backend vs Numba: {err:.3e}"
    vinfo = symopt.runtime.kernels.load(rule).FAMILY["variants"][0]
    nel = len(vinfo["state"])
    for k, spec in enumerate(vinfo["matrix"]["states"]):
        for j, mats in enumerate(state.state[nel + k]):
            assert {f"{spec['key']}_{a}": tuple(m.shape) for a, m in enumerate(mats) if m is not None} == {
                key: shape for key, shape in state_shapes[j].items() if key.rpartition("_")[0] == spec["key"]}


@pytest.mark.parametrize("direction", ["torch->numba", "numba->torch"])
def test_preconditioned_state_dict_moves_between_backends(direction):
    """SOAP's torch-format checkpoint (pytorch-optimizer's GG/Q lists and group step) from one backend
    continues on the other as if uninterrupted (float64, 4 + 4 steps)."""
    _, rule, kw, shapes = PRECOND_CASES[4]
    rng = np.random.default_rng(9)
    theta0 = [rng.uniform(0.5, 2.0, s) for s in shapes]
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(8)]
    first, second = ("torch", "numba") if direction == "torch->numba" else ("numba", "torch")
    runs = []
    for backends in ((first, first), (first, second)):
        params = [torch.tensor(x) for x in theta0]
        opt = Optimizer(rule, params, backend=backends[0], **kw)
        for k, g in enumerate(grads):
            if k == 4:
                sd = opt.state_dict()
                assert isinstance(sd["state"][0]["GG"], list) and "step" in sd["param_groups"][0]
                opt = Optimizer(rule, params, backend=backends[1], **kw)
                opt.load_state_dict(sd)
            for p, x in zip(params, g):
                p.grad = torch.tensor(x)
            opt.step()
        runs.append(params)
    assert max(rel_err(a, b, floor=1.0) for a, b in zip(*runs)) <= 1e-12


def test_preconditioned_array_modules_pass_the_audit():
    """The text a user's every-axis preconditioned rule gets for either backend (the built-ins' modules
    here) has a generated module's shape: linalg.eigh/qr, lax.cond, nested functions, no lambdas."""
    import importlib
    import inspect

    from symopt.codegen.audit import audit_module

    for name in PRECONDITIONED:
        for index in (generated_torch, generated_jax):
            audit_module(inspect.getsource(importlib.import_module(f"{index.__name__}.{index.RULES[name]}")))


def test_preconditioned_layout_is_fixed_when_the_state_is_made():
    """A hyperparameter change that would keep matrix states on other axes is refused before anything
    changes (pytorch-optimizer decides them at a param's first step, as the Numba backend does)."""
    p = torch.ones(3, 4, dtype=torch.float64)
    opt = Optimizer("soap", [p], backend="torch", precondition_frequency=2)
    p.grad = torch.full_like(p, 0.5)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items() if k != "step"}
    opt.param_groups[0]["max_precondition_dim"] = 3      # axis 1 (4) would keep no states
    with pytest.raises(ValueError, match="change which axes keep matrix states"):
        opt.step()
    assert all(torch.equal(opt.state[p][k], v) for k, v in before.items()) and opt.state[p]["step"] == 1
