"""symopt's benchmark suite (``make bench`` / ``python -m symopt bench``).

Measures, in one run and side by side, the targets of the performance issue:

1. at the limit -- every elementwise built-in rule (default variant), float32 and
   float64, at 1e7 elements, against a *same-traffic kernel*: one ``prange`` loop
   that reads and writes exactly the arrays the step reads and writes (param,
   grad, each state buffer) with trivial arithmetic; with ``on_nonfinite="ignore"``
   and with the default finiteness check;
2. against NumPy -- an in-place NumPy Adam (torch's formula, one scratch buffer);
3. many tensors -- 240 arrays (~13.9 M params, transformer-like mix), separate and
   in one :class:`symopt.FlatBuffer`, against torch ``fused=True`` and foreach;
4. small models -- 3 tensors / 11.5 k float32 params, and the fixed cost of
   ``step()`` on 650 elements;
5. large -- 1e8 float32 against torch fused;
6. threads -- serial against threaded kernel over sizes: the measured crossover;
7. start-up -- a fresh process with a warm cache, and the cold compile time (and
   the vector width of the generated assembly) of every built-in kernel;
8. memory -- bytes a step allocates (tracemalloc), at two sizes;
9. backends -- AdamW through the Numba kernels, the torch backend (eager and compiled) and the
   JAX backend beside torch fused/foreach and optax.adamw (``bench_devices.py``);
10. a training loop fused into one ``@numba.njit`` function with a rule's generated
    ``element`` (``symopt.kernel``), against the same loop calling ``symopt.optimizer``
    once per step (``bench_numba_loop.py``);
11. matrix rules -- Muon against torch.optim.Muon and a plain sgemm of the same sizes; Shampoo against
    pytorch-optimizer's Shampoo; Adafactor against torch.optim.Adafactor;
12. every size at the limit -- Adam on one tensor of 1e4, 1e5, 1e6 elements against the best
    same-traffic kernel at that size (serial or ``prange``), the fixed cost of ``step()``, one
    fork/join of the threads, the warm start (``bench_midsize.py``).

Phases that run alone: ``python -m symopt bench --only midsize`` (writes ``results_midsize.md``);
:data:`ALONE` lists them.

Timing: every candidate of a comparison is timed round-robin in the same
process (so that a drift of the shared machine hits all alike); each timing is a
batch of calls lasting >= 0.2 ms; a peer row is the median over rounds of the per-round ratio
(the limit table's minimum same-traffic time only sets its GB/s).
Every peer runs with the same number of threads (torch.set_num_threads,
numba.set_num_threads); NumPy's elementwise loops are single-threaded; JAX/XLA
uses its own thread pool (not settable per call).  Writes ``results.md`` and
``time_per_element.png`` into the output folder.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path

import numba
import numpy as np

import symopt
from symopt.runtime import kernels as _kernels
from symopt.runtime import optimizer as _optmod
from symopt.runtime.layout import kernel_frame

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_devices.py, beside this file
RULE = "adam" if "adam" in symopt.rules() else "notes.adam_warmup"
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
DTYPES = (np.float32, np.float64)


# ----------------------------------------------------------------------------- timing
def measure(fns: dict, rounds: int = 12, min_batch: float = 2e-4, budget: float = 6.0, pause: float = 0.01,
            before: dict | None = None) -> dict:
    """Per-call seconds of each callable: {name: {"min": s, "median": s}} (round-robin, batched).

    ``before``: {name: callable} run untimed before each batch of that candidate (e.g. set the mode of an
    optimizer that two candidates share).

    ``pause`` seconds pass between two batches: OpenMP (numba, torch) and XLA worker threads
    spin for a while after a parallel region, and on a 2-core machine a peer's spinning
    threads would otherwise slow down whichever candidate runs next.  One untimed call
    precedes each batch, so that a batch measures back-to-back steps (as in a training loop)
    rather than the wake-up after the pause.
    """
    names = list(fns)
    before = before or {}
    batch = {}
    for name in names:
        if name in before:
            before[name]()
        batch[name] = _batch_size(fns[name], min_batch)
    samples = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            f, k = fns[name], batch[name]
            if name in before:
                before[name]()
            f()                          # untimed: the first call after the pause finds cold caches/threads
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            samples[name].append((time.perf_counter() - t0) / k)
            time.sleep(pause)
        if r >= 4 and time.perf_counter() - start > budget:
            break
    return {n: {"min": min(s), "median": float(np.median(s)), "samples": s} for n, s in samples.items()}


def _batch_size(f, min_batch: float) -> int:
    """Calls of ``f`` that take about ``min_batch`` seconds back to back (at least 1), timed on runs of 1, 2, 4...
    calls until a run of at least 4 lasts ``min_batch``.  The first calls can take many times the steady
    per-call time (a parallel loop on 1e4 elements: 80 us, then 3 us, while the idle core wakes up), which
    would leave a fast candidate a batch of one slow call."""
    f()                                    # warm up (compile, first touch)
    if min_batch <= 0:
        return 1
    k = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(k):
            f()
        took = time.perf_counter() - t0
        if (took >= min_batch and k >= 4) or k >= 1 << 20:
            return max(1, round(k * min_batch / max(took, 1e-9)))
        k *= 2


def paired_ratio(res: dict, num: str, den: str) -> float:
    """Median over rounds of ``num``'s time / ``den``'s time in the same round.

    Candidates of one round run back to back, so a round's ratio compares them under the same
    machine state; on this shared machine the bandwidth itself drifts by up to 1.5x between
    rounds, which a ratio of separate minimums would mistake for a difference between kernels.
    """
    return float(np.median(np.array(res[num]["samples"]) / np.array(res[den]["samples"])))


# ------------------------------------------------------------------------ same traffic
# Each loop reads and writes the arrays a rule's step does, with one multiply-add per array.  They run on
# the optimizer's own arrays, interleaved with its steps, so they leave its state valid: finite, and
# s <- s*c + g**2 keeps every state >= 0 (a second moment's square root stays real).  With s*c + g the
# second moments would turn negative and the params NaN within a few rounds, and NaN operands slow this
# CPU's square root and divide (Adam at 1e4 float32: 1.4x): the step would be charged for garbage.
@numba.njit(parallel=True, error_model="numpy")
def _traffic0(p, g, c):
    for i in numba.prange(p.shape[0]):
        p[i] = p[i] + c * g[i]


@numba.njit(parallel=True, error_model="numpy")
def _traffic1(p, g, s0, c):
    for i in numba.prange(p.shape[0]):
        gi = g[i]
        g2 = gi * gi
        p[i] = p[i] + c * gi
        s0[i] = s0[i] * c + g2


@numba.njit(parallel=True, error_model="numpy")
def _traffic2(p, g, s0, s1, c):
    for i in numba.prange(p.shape[0]):
        gi = g[i]
        g2 = gi * gi
        p[i] = p[i] + c * gi
        s0[i] = s0[i] * c + g2
        s1[i] = s1[i] * c + g2


@numba.njit(parallel=True, error_model="numpy")
def _traffic3(p, g, s0, s1, s2, c):
    for i in numba.prange(p.shape[0]):
        gi = g[i]
        g2 = gi * gi
        p[i] = p[i] + c * gi
        s0[i] = s0[i] * c + g2
        s1[i] = s1[i] * c + g2
        s2[i] = s2[i] * c + g2


@numba.njit(parallel=True, error_model="numpy")
def _traffic4(p, g, s0, s1, s2, s3, c):
    for i in numba.prange(p.shape[0]):
        gi = g[i]
        g2 = gi * gi
        p[i] = p[i] + c * gi
        s0[i] = s0[i] * c + g2
        s1[i] = s1[i] * c + g2
        s2[i] = s2[i] * c + g2
        s3[i] = s3[i] * c + g2


@numba.njit(parallel=True, error_model="numpy")
def _traffic5(p, g, s0, s1, s2, s3, s4, c):
    for i in numba.prange(p.shape[0]):
        gi = g[i]
        g2 = gi * gi
        p[i] = p[i] + c * gi
        s0[i] = s0[i] * c + g2
        s1[i] = s1[i] * c + g2
        s2[i] = s2[i] * c + g2
        s3[i] = s3[i] * c + g2
        s4[i] = s4[i] * c + g2


_TRAFFIC = (_traffic0, _traffic1, _traffic2, _traffic3, _traffic4, _traffic5)


@numba.njit(parallel=True, error_model="numpy")
def _read_once(g):
    """One read of ``g`` and nothing else: the count of its NaN/inf values (vectorized, all threads)."""
    bad = 0
    for i in numba.prange(g.shape[0]):
        x = g[i]
        bad += (x - x) != 0
    return bad


def all_finite(*arrays) -> bool:
    """Whether every value of ``arrays`` is finite: a timing on NaN/inf operands is not a timing of the rule."""
    return all(bool(np.isfinite(a).all()) for a in arrays)


def same_traffic(p, g, states):
    """The same-traffic kernel for a param, its grad and ``states`` (flat arrays of one dtype)."""
    fn = _TRAFFIC[len(states)]
    c = p.dtype.type(0.5)
    return lambda: fn(p, g, *states, c)


# ----------------------------------------------------------------------------- peers
def numpy_adam(params, grads, lr=LR, betas=BETAS, eps=EPS):
    """In-place NumPy Adam (torch's formula), one scratch buffer per tensor."""
    b1, b2 = betas
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    tmp = [np.empty_like(p) for p in params]
    t = [0]

    def step():
        t[0] += 1
        bc1, bc2 = 1 - b1 ** t[0], 1 - b2 ** t[0]
        for p, g, m, v, s in zip(params, grads, ms, vs, tmp):
            m *= b1
            np.multiply(g, 1 - b1, out=s)
            m += s
            v *= b2
            np.multiply(g, g, out=s)
            s *= 1 - b2
            v += s
            np.sqrt(v, out=s)
            s /= math.sqrt(bc2)
            s += eps
            np.divide(m, s, out=s)
            s *= -lr / bc1
            p += s

    return step


def numpy_adam_temporaries(params, grads, lr=LR, betas=BETAS, eps=EPS):
    """NumPy Adam as usually written (torch's single-tensor code in NumPy): state updated in
    place, expressions allocating temporaries."""
    b1, b2 = betas
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    t = [0]

    def step():
        t[0] += 1
        bc1, bc2 = 1 - b1 ** t[0], 1 - b2 ** t[0]
        for p, g, m, v in zip(params, grads, ms, vs):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            denom = np.sqrt(v) / math.sqrt(bc2) + eps
            p -= (lr / bc1) * m / denom

    return step


def torch_adam(params, grads, kind):
    """torch.optim.Adam with ``foreach=True`` or ``fused=True`` over copies of ``params``."""
    import torch

    ts = [torch.from_numpy(p.copy()) for p in params]
    for t_, g in zip(ts, grads):
        t_.grad = torch.from_numpy(g)
    opt = torch.optim.Adam(ts, lr=LR, betas=BETAS, eps=EPS, **{kind: True})

    def step():
        opt.step()

    return step


def optax_adam(params, grads):
    """optax.adam, jitted with donated params and state (XLA's in-place update)."""
    import jax
    import optax

    if params[0].dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    tx = optax.adam(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS)
    ps = [jax.device_put(p.copy()) for p in params]
    gs = [jax.device_put(g) for g in grads]
    box = [ps, tx.init(ps)]

    @jax.jit
    def _step(ps, st, gs):
        upd, st = tx.update(gs, st, ps)
        return optax.apply_updates(ps, upd), st

    jstep = jax.jit(_step, donate_argnums=(0, 1))

    def step():
        box[0], box[1] = jstep(box[0], box[1], gs)
        jax.block_until_ready(box)

    return step


def symopt_step(params, grads, rule=RULE, **kw):
    opt = symopt.optimizer(rule, params, lr=LR, **kw)
    return (lambda: opt.step(grads)), opt


def check_modes(opt) -> dict:
    """``measure``'s ``before`` hooks of the candidates "ignore" and "check": one optimizer steps unchecked, then
    checked, on the same arrays.  Two optimizers' arrays lie on different pages, and that alone moved Adam's
    threaded step at 262144 float32 (1 MB an array) by 0.80-1.16x between six identical optimizers: the
    checked one of a pair came out faster than the unchecked one in some runs."""
    checked = opt.on_nonfinite if opt.on_nonfinite != "ignore" else "raise"   # the mode it was built with
    return {"ignore": lambda: setattr(opt, "on_nonfinite", "ignore"),
            "check": lambda: setattr(opt, "on_nonfinite", checked)}


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:
        return False


def _arrays(sizes, dtype, rng, scale=1.0):
    return [(rng.standard_normal(n) * scale).astype(dtype) for n in sizes]


# ---------------------------------------------------------------------------- phases
def elementwise_rules() -> list:
    """The built-in rules that step any array elementwise (matrix rules have phase_matrix)."""
    return [n for n in symopt.rules() if not {"matrix", "factored"} & set(_kernels.load_builtin(n).FAMILY["variants"][0])]


def phase_limit(size: int, rounds: int, log, names=None) -> list:
    """Target 1: every elementwise built-in rule (or ``names``), both dtypes, at ``size`` elements."""
    rng = np.random.default_rng(0)
    rows = []
    for name in names or elementwise_rules():
        mod = _kernels.load_builtin(name)
        for dtype in DTYPES:
            p0 = _arrays([size], dtype, rng)[0]
            g = (rng.standard_normal(size) * 1e-3).astype(dtype)
            opt = symopt.optimizer(name, [p0.copy()], on_nonfinite="ignore")
            if opt._vinfo.get("reduce") is not None:
                break                                  # not elementwise: reduction passes first
            # The same-traffic kernel runs on the very arrays the step uses, unchecked and checked (its param,
            # the grad, its state buffers), so that all see the same pages: separately allocated arrays
            # were seen to stream up to 1.5x faster or slower on this shared machine.  It leaves the state
            # finite and non-negative (see the same-traffic loops), so the step computes on valid values.
            tp, tg, tstates = opt.param_groups[0]["params"][0], g, opt._state
            try:
                res = measure({"same": same_traffic(tp, tg, tstates), "ignore": lambda: opt.step([g]),
                               "check": lambda: opt.step([g]), "read": lambda: _read_once(g)}, rounds=rounds,
                              before=check_modes(opt))
            except Exception as exc:   # a rule whose default step misbehaves on this data
                rows.append({"rule": name, "dtype": np.dtype(dtype).name, "error": repr(exc)})
                continue
            if not all_finite(tp, *tstates):
                rows.append({"rule": name, "dtype": np.dtype(dtype).name,
                             "error": "the param or state went NaN/inf during the rounds: timed on invalid values"})
                continue
            same = res["same"]["min"]
            extra = np.median((np.array(res["check"]["samples"]) - np.array(res["ignore"]["samples"]))
                              / np.array(res["read"]["samples"]))
            rows.append({"rule": name, "variant": opt.variant, "dtype": np.dtype(dtype).name,
                         "nstate": len(opt._state), "same_ms": same * 1e3,
                         "ignore": paired_ratio(res, "ignore", "same"), "check": paired_ratio(res, "check", "same"),
                         "gbps": (2 + 2 * len(opt._state) + 1) * size * np.dtype(dtype).itemsize / same / 1e9,
                         "bound": (4 + 2 * len(opt._state)) / (3 + 2 * len(opt._state)),
                         "reads": float(extra)})
            log(f"  {name:18s} {np.dtype(dtype).name}: ignore {rows[-1]['ignore']:.3f}x  "
                f"check {rows[-1]['check']:.3f}x  check cost {rows[-1]['reads']:.2f} grad reads  "
                f"(same-traffic {same * 1e3:.2f} ms)")
            del opt, tp, tg, tstates
        del mod
    return rows


def phase_sizes(sizes, rounds, log) -> dict:
    """Targets 2 and the PNG: Adam over sizes, every peer, both dtypes (one tensor)."""
    rng = np.random.default_rng(1)
    out, ratios = {}, {}
    have_torch, have_optax = _have("torch"), _have("optax")
    for dtype in DTYPES:
        dname = np.dtype(dtype).name
        for n in sizes:
            p = _arrays([n], dtype, rng)
            g = _arrays([n], dtype, rng, 1e-3)
            fns = {}
            fns["symopt"], _ = symopt_step([x.copy() for x in p], g)
            fns["symopt (ignore)"], _ = symopt_step([x.copy() for x in p], g, on_nonfinite="ignore")
            f, o = symopt_step([x.copy() for x in p], g)
            o.parallel_threshold = 1 << 62
            fns["symopt serial"] = f
            f, o = symopt_step([x.copy() for x in p], g)
            o.parallel_threshold = 0
            fns["symopt threaded"] = f
            nstate = len(o._state)
            fns["same-traffic kernel"] = same_traffic(p[0].copy(), g[0], [np.zeros(n, dtype) for _ in range(nstate)])
            fns["numpy"] = numpy_adam([x.copy() for x in p], g)
            fns["numpy (temporaries)"] = numpy_adam_temporaries([x.copy() for x in p], g)
            if have_torch:
                fns["torch foreach"] = torch_adam(p, g, "foreach")
                fns["torch fused"] = torch_adam(p, g, "fused")
            if have_optax:
                fns["optax (jit)"] = optax_adam(p, g)
            res = measure(fns, rounds=rounds, budget=4.0)
            out[(dname, n)] = {k: v["min"] for k, v in res.items()}
            ratios[(dname, n)] = {k: paired_ratio(res, k, "symopt") for k in res}
            log(f"  adam {dname} n={n:>9}: " + "  ".join(f"{k} {v:.2f}x" for k, v in ratios[(dname, n)].items()))
            del fns
    return {"times": out, "ratios": ratios}


def transformer_shapes(layers: int = 20, d: int = 240) -> list:
    """240 tensors (20 layers x 12) of a transformer-like mix: ~13.9 M params."""
    shapes = []
    for _ in range(layers):
        shapes += [(d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,),
                   (d, 4 * d), (4 * d,), (4 * d, d), (d,), (d,), (d,)]
    return shapes


def phase_many(rounds, log) -> dict:
    """Target 3: 240 separate arrays, and the same in one FlatBuffer, against torch."""
    rng = np.random.default_rng(2)
    shapes = transformer_shapes()
    sizes = [math.prod(s) for s in shapes]
    p = [x.reshape(s) for x, s in zip(_arrays(sizes, np.float32, rng), shapes)]
    g = [x.reshape(s) for x, s in zip(_arrays(sizes, np.float32, rng, 1e-3), shapes)]
    fns = {}
    fns["symopt"], _ = symopt_step([x.copy() for x in p], g)
    fns["symopt (ignore)"], _ = symopt_step([x.copy() for x in p], g, on_nonfinite="ignore")
    pb = symopt.FlatBuffer.from_arrays(p)
    gb = symopt.FlatBuffer.from_arrays(g)
    fns["symopt flat"], fo = symopt_step(pb.arrays, gb.arrays)
    fns["symopt flat (ignore)"], _ = symopt_step(symopt.FlatBuffer.from_arrays(p).arrays, gb.arrays,
                                                 on_nonfinite="ignore")
    if _have("torch"):
        fns["torch fused"] = torch_adam(p, g, "fused")
        fns["torch foreach"] = torch_adam(p, g, "foreach")
        fns["torch fused, one flat tensor"] = torch_adam([pb.flat], [gb.flat], "fused")
    res = measure(fns, rounds=rounds, budget=8.0)
    fns["symopt flat"]()
    assert fo._flat is not None and any(k[1] for k in fo._tables), "the flat path was not taken"
    out = {k: v["median"] for k, v in res.items()}
    # Every row against torch fused is the median of the per-round ratios (candidates of one round run back to
    # back): a ratio of separate minimums once reported the checked step faster than the unchecked one.
    ratios = {k: paired_ratio(res, "torch fused", k) for k in res} if "torch fused" in res else {}
    # The check's own cost, paired directly: checked / unchecked time in the same round.
    check = {k: paired_ratio(res, k, f"{k} (ignore)") for k in ("symopt", "symopt flat")}
    log("  240 tensors: " + "  ".join(f"{k} {v * 1e3:.2f} ms" for k, v in out.items()))
    log("  cost of the check (checked / unchecked): " + "  ".join(f"{k} {v:.2f}x" for k, v in check.items()))
    return {"ntensors": len(shapes), "nparams": sum(sizes), "times": out, "ratios": ratios, "check": check}


def phase_small(rounds, log) -> dict:
    """Target 4: 3 tensors / 11.5 k float32 params; the fixed cost of step() on 650 elements."""
    rng = np.random.default_rng(3)
    shapes = [(100, 110), (110,), (390,)]
    p = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    g = [(rng.standard_normal(s) * 1e-3).astype(np.float32) for s in shapes]
    fns = {}
    fns["symopt"], opt = symopt_step([x.copy() for x in p], g)
    fns["symopt (ignore)"], _ = symopt_step([x.copy() for x in p], g, on_nonfinite="ignore")
    fb, gb = symopt.FlatBuffer.from_arrays(p), symopt.FlatBuffer.from_arrays(g)
    fns["symopt flat"], _ = symopt_step(fb.arrays, gb.arrays)
    opt.step(g)
    frame = kernel_frame(np.float32, (opt._pptr, opt._gptr, *opt._state, opt._offs, opt._chunks, opt._work,
                                      opt._scal, opt._hyp, opt._no_words, opt._no_steps, True))
    kern = opt._kernel_serial
    fns["kernel call alone"] = lambda: kern(frame)
    fns["numpy"] = numpy_adam([x.copy() for x in p], g)
    if _have("torch"):
        fns["torch fused"] = torch_adam(p, g, "fused")
        fns["torch foreach"] = torch_adam(p, g, "foreach")
    if _have("optax"):
        fns["optax (jit)"] = optax_adam(p, g)
    res = measure(fns, rounds=rounds * 2, budget=6.0)
    tiny = [rng.standard_normal((25, 25)).astype(np.float32), rng.standard_normal(25).astype(np.float32)]
    tg = [np.full_like(x, 1e-3) for x in tiny]
    f650, o650 = symopt_step(tiny, tg)
    o650.step(tg)
    a650 = kernel_frame(np.float32, (o650._pptr, o650._gptr, *o650._state, o650._offs, o650._chunks, o650._work,
                                     o650._scal, o650._hyp, o650._no_words, o650._no_steps, True))
    k650 = o650._kernel_serial
    r650 = measure({"step": f650, "kernel": lambda: k650(a650)}, rounds=rounds * 2)
    out = {k: v["median"] for k, v in res.items()}
    ratios = {k: paired_ratio(res, k, "symopt") for k in res}
    log("  3 tensors 11.5k f32: " + "  ".join(f"{k} {v * 1e6:.2f} us" for k, v in out.items()))
    s650 = {k: np.array(v["samples"]) for k, v in r650.items()}
    fixed = {"step": float(np.median(s650["step"])), "kernel": float(np.median(s650["kernel"])),
             "beyond": float(np.median(s650["step"] - s650["kernel"]))}   # per-round differences
    log(f"  650 elements: step {fixed['step'] * 1e6:.2f} us, kernel call alone {fixed['kernel'] * 1e6:.2f} us, "
        f"the step beyond it {fixed['beyond'] * 1e6:.2f} us (medians)")
    return {"times": out, "fixed": fixed, "ratios": ratios}


MUON_SHAPES = ((1024, 1024), (1024, 4096), (4096, 1024))


def muon_flops(rows: int, cols: int, steps: int = 5) -> float:
    """Nominal flops of Muon's Newton–Schulz as torch computes it (r = min side, c = max side):
    per step XXᵀ (2r²c), A·A (2r³) and B·X (2r²c)."""
    r, c = min(rows, cols), max(rows, cols)
    return steps * (4.0 * r * r * c + 2.0 * r ** 3)


def symopt_muon_flops(rows: int, cols: int, steps: int = 5) -> float:
    """Flops symopt's BLAS calls execute for Muon's Newton–Schulz (the generated ``_odd_iteration``; a
    syrk counted as half its gemm): directly, per step XXᵀ (r²c, syrk), A² (r³, syrk) and H·X (2r²c);
    in the Gram space (c ≥ 3r) A₀ (r²c) and X = P·X₀ (2r²c) once, A² (r³) per step and H² (r³),
    A·H² (2r³), H·P (2r³) per step but the last."""
    r, c = min(rows, cols), max(rows, cols)
    if c >= 3 * r and steps >= 2:
        return 3.0 * r * r * c + steps * r ** 3 + (steps - 1) * 5.0 * r ** 3
    return steps * (3.0 * r * r * c + r ** 3)


def _blas_threads(n: int):
    """A context limiting the BLAS libraries' threads (SciPy's and NumPy's OpenBLAS) to ``n``; a no-op
    without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def phase_matrix(rounds, log, shapes=MUON_SHAPES) -> list:
    """Muon (float32): symopt's step against torch.optim.Muon's (bfloat16 Newton–Schulz) and a
    plain sgemm (r×c)·(c×r) of the same sizes, interleaved; symopt's GFLOP/s: the flops its BLAS calls
    execute (:func:`symopt_muon_flops`) per second of a whole step (the element passes included), as a
    fraction of that sgemm's GFLOP/s, and torch's algorithm's nominal flops (:func:`muon_flops`) per
    second of symopt's step."""
    from scipy.linalg import blas

    rng = np.random.default_rng(5)
    rows_out = []
    for shape in shapes:
        p = rng.standard_normal(shape).astype(np.float32)
        g = (rng.standard_normal(shape) * 1e-2).astype(np.float32)
        fns = {}
        fns["symopt"], _ = symopt_step([p.copy()], [g], rule="muon")
        r, c = min(shape), max(shape)
        x = np.asfortranarray(rng.standard_normal((r, c)).astype(np.float32))
        out = np.zeros((r, r), np.float32, order="F")
        fns["sgemm (r×c)·(c×r)"] = lambda x=x, out=out: blas.sgemm(1.0, x, x, 0.0, out, 0, 1, 1)
        if _have("torch"):
            import torch

            tp = torch.from_numpy(p.copy())
            tp.grad = torch.from_numpy(g.copy())
            topt = torch.optim.Muon([tp], lr=0.02)
            fns["torch.optim.Muon"] = topt.step
        # SciPy's OpenBLAS (symopt's matrix products and the sgemm) with as many threads as every peer
        with _blas_threads(numba.get_num_threads()):
            res = measure(fns, rounds=rounds, min_batch=0, budget=20.0)
        gemm_rate = 2.0 * r * r * c / res["sgemm (r×c)·(c×r)"]["median"]
        rate = symopt_muon_flops(*shape) / res["symopt"]["median"]
        row = {"shape": shape, "symopt": res["symopt"]["median"], "gflops": rate / 1e9,
               "nominal_gflops": muon_flops(*shape) / res["symopt"]["median"] / 1e9,
               "sgemm_gflops": gemm_rate / 1e9, "fraction": rate / gemm_rate,
               "gram": c >= 3 * r}
        if "torch.optim.Muon" in res:
            row["torch"] = res["torch.optim.Muon"]["median"]
            row["vs_torch"] = paired_ratio(res, "torch.optim.Muon", "symopt")
        rows_out.append(row)
        log(f"  muon {shape[0]}x{shape[1]} f32 ({'Gram space' if row['gram'] else 'direct'}): symopt "
            f"{row['symopt'] * 1e3:.1f} ms, {row['gflops']:.0f} GFLOP/s executed = {row['fraction']:.2f} of sgemm "
            f"({row['sgemm_gflops']:.0f} GFLOP/s), {row['nominal_gflops']:.0f} GFLOP/s of torch's flops"
            + (f"; torch.optim.Muon (bf16) {row['torch'] * 1e3:.1f} ms, symopt {row['vs_torch']:.2f}x faster"
               if "torch" in row else ""))
    return rows_out


ADAFACTOR_SHAPES = ((1024, 1024), (1024, 4096), (4096, 1024), (16, 256, 256))


def phase_adafactor(rounds, log, shapes=ADAFACTOR_SHAPES) -> list:
    """Adafactor (float32): symopt's factored step against torch.optim.Adafactor (its single-tensor
    and foreach paths) on one param of each shape; medians of per-round time ratios."""
    rng = np.random.default_rng(6)
    rows_out = []
    for shape in shapes:
        p = rng.standard_normal(shape).astype(np.float32)
        g = (rng.standard_normal(shape) * 1e-2).astype(np.float32)
        fns = {}
        fns["symopt"], _ = symopt_step([p.copy()], [g], rule="adafactor")
        if _have("torch"):
            import torch

            for foreach in (False, True):
                tp = torch.from_numpy(p.copy())
                tp.grad = torch.from_numpy(g.copy())
                fns[f"torch foreach={foreach}"] = torch.optim.Adafactor([tp], lr=LR, foreach=foreach).step
        res = measure(fns, rounds=rounds, min_batch=0, budget=20.0)
        row = {"shape": shape, "symopt": res["symopt"]["median"]}
        for foreach in (False, True):
            name = f"torch foreach={foreach}"
            if name in res:
                row[name] = res[name]["median"]
                row[f"vs {name}"] = paired_ratio(res, name, "symopt")
        rows_out.append(row)
        log(f"  adafactor {'x'.join(map(str, shape))} f32: symopt {row['symopt'] * 1e3:.2f} ms"
            + "".join(f"; torch.optim.Adafactor foreach={fe} {row[f'torch foreach={fe}'] * 1e3:.2f} ms, "
                      f"symopt {row[f'vs torch foreach={fe}']:.2f}x faster"
                      for fe in (False, True) if f"torch foreach={fe}" in row))
    return rows_out


def adafactor_report(rows) -> str:
    """The Adafactor section of results.md."""
    L = ["\n## Matrix rules: Adafactor (float32)\n",
         "symopt's factored step (two read-only passes for the row/column means and the update's RMS, "
         "then one writing pass) against torch.optim.Adafactor's single-tensor (foreach=False) and foreach "
         "paths, one param per shape. vs torch: median of per-round time ratios (>1: symopt faster); "
         "target ≥ 1.5×.\n",
         "| shape | symopt step | torch foreach=False | vs torch | torch foreach=True | vs torch |",
         "|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for fe in (False, True):
            name = f"torch foreach={fe}"
            cells += [f"{r[name] * 1e3:.2f} ms", f"{r['vs ' + name]:.2f}×"] if name in r else ["—", "—"]
        L.append(f"| {'×'.join(map(str, r['shape']))} | {r['symopt'] * 1e3:.2f} ms | " + " | ".join(cells) + " |")
    return "\n".join(L) + "\n"


PRECONDITIONED_SHAPES = ((512, 512), (512, 2048), (2048, 512))


def phase_preconditioned(rounds, log, shapes=PRECONDITIONED_SHAPES) -> list:
    """Shampoo and SOAP (float32, defaults: Shampoo's roots recomputed every step, SOAP's eigenbases
    every 10 steps): symopt's step against pytorch-optimizer's ``Shampoo`` (SVD roots) and ``SOAP``,
    median of per-round interleaved ratios."""
    rng = np.random.default_rng(6)
    rows_out = []
    for rule, peer_class in (("shampoo", "Shampoo"), ("soap", "SOAP")):
        for shape in shapes:
            p = rng.standard_normal(shape).astype(np.float32)
            g = (rng.standard_normal(shape) * 1e-2).astype(np.float32)
            fns = {}
            fns["symopt"], _ = symopt_step([p.copy()], [g], rule=rule)
            if _have("pytorch_optimizer"):
                import pytorch_optimizer
                import torch

                tp = torch.from_numpy(p.copy())
                # Shampoo's defaults keep the grad as set; SOAP's maximize=False never writes it
                tp.grad = torch.from_numpy(g.copy())
                fns["pytorch-optimizer"] = getattr(pytorch_optimizer, peer_class)([tp], lr=LR).step
            res = measure(fns, rounds=rounds, min_batch=0, budget=30.0)
            row = {"rule": rule, "shape": shape, "symopt": res["symopt"]["median"]}
            if "pytorch-optimizer" in res:
                row["peer"] = res["pytorch-optimizer"]["median"]
                row["vs_peer"] = paired_ratio(res, "pytorch-optimizer", "symopt")
            rows_out.append(row)
            log(f"  {rule} {shape[0]}x{shape[1]} f32: symopt {row['symopt'] * 1e3:.1f} ms"
                + (f"; pytorch-optimizer {row['peer'] * 1e3:.1f} ms, symopt {row['vs_peer']:.2f}x faster"
                   if "peer" in row else ""))
    return rows_out


def preconditioned_report(rows) -> str:
    """The Shampoo and SOAP section of results.md."""
    L = ["\n## Kronecker-factored rules: Shampoo and SOAP (float32)\n",
         ("Default keywords (Shampoo's inverse roots recomputed every step, SOAP's eigenbases every 10). symopt: "
          "statistics by ?syrk, Shampoo's roots by LAPACK's ?syevd and a ?syrk, SOAP's eigenbases by ?syevd once, "
          "then ?gemm, ?geqrf and ?orgqr, each value by two ?gemm, elementwise parts in Numba passes between them; "
          "pytorch-optimizer 4.1.0: addmm/tensordot statistics, roots by SVD, SOAP's QR in float32. vs peer: median "
          "of per-round time ratios (>1: symopt faster).\n"),
         "| rule | shape | symopt step | pytorch-optimizer | vs peer |", "|---|---|---|---|---|"]
    for r in rows:
        peer = f"{r['peer'] * 1e3:.1f} ms" if "peer" in r else "—"
        vs = f"{r['vs_peer']:.2f}×" if "vs_peer" in r else "—"
        L.append(f"| {r['rule']} | {r['shape'][0]}×{r['shape'][1]} | {r['symopt'] * 1e3:.1f} ms | {peer} | {vs} |")
    return "\n".join(L) + "\n"


def phase_large(n, rounds, log) -> dict:
    """Target 5: one float32 tensor of ``n`` elements against torch fused."""
    rng = np.random.default_rng(4)
    p = np.empty(n, np.float32)
    g = np.empty(n, np.float32)
    for lo in range(0, n, 1 << 24):                 # fill in pieces: no float64 temporaries of size n
        hi = min(n, lo + (1 << 24))
        p[lo:hi] = rng.standard_normal(hi - lo, dtype=np.float32)
        g[lo:hi] = rng.standard_normal(hi - lo, dtype=np.float32) * np.float32(1e-3)
    fns = {}
    fns["symopt"], _ = symopt_step([p], [g])
    fns["symopt (ignore)"], _ = symopt_step([p.copy()], [g], on_nonfinite="ignore")
    if _have("torch"):
        fns["torch fused"] = torch_adam([p], [g], "fused")
    res = measure(fns, rounds=rounds, budget=20.0)
    out = {k: v["median"] for k, v in res.items()}
    ratios = {k: paired_ratio(res, "torch fused", k) for k in res} if "torch fused" in res else {}
    log(f"  n={n:.0e} f32: " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in out.items()))
    return {"n": n, "times": out, "ratios": ratios}


def phase_backends(n, rounds, log) -> dict:
    """Target 9: AdamW over one float32 tensor of ``n``: the Numba kernels, the torch backend (eager and
    ``compile=True``), the JAX backend, torch fused/foreach and optax.adamw (``bench_devices.py``'s
    candidates, on this CPU), all timed round-robin in one ``measure``: every row is the median of
    per-round ratios to torch fused (and, for the JAX rows, to optax.adamw), and the cost of the
    finiteness check is the median of per-round checked / unchecked ratios."""
    out = {"n": n, "rows": [], "check": {}}
    if not _have("torch"):
        return out
    import torch

    import bench_devices

    fns = bench_devices.torch_candidates([(n,)], torch.float32, "cpu", numba=True)
    if _have("optax"):
        fns.update(bench_devices.jax_candidates([(n,)]))
    res = measure(fns, rounds=rounds, budget=30.0)
    for k in res:
        jax_row = "optax adamw" in res and ("jax" in k or "optax" in k)
        vs_optax = paired_ratio(res, k, "optax adamw") if jax_row else None
        out["rows"].append((k, paired_ratio(res, k, "torch fused"), vs_optax, res[k]["median"]))
    out["check"] = bench_devices.check_costs(res)
    for k, r, rj, t in out["rows"]:
        log(f"  {k:32s} {r:5.2f}x torch fused" + (f"  {rj:5.2f}x optax adamw" if rj is not None else " " * 20)
            + f"  ({t * 1e3:.2f} ms)")
    log("  cost of the check (checked / unchecked): " + "  ".join(f"{k} {v:.2f}x" for k, v in out["check"].items()))
    return out


def phase_threshold(rounds, log, exps=range(10, 23)) -> dict:
    """Target 6: serial against threaded kernel, Adam, one tensor of 2^k elements."""
    rng = np.random.default_rng(5)
    out = {}
    for dtype in DTYPES:
        dname = np.dtype(dtype).name
        for k in exps:
            n = 1 << k
            p, g = _arrays([n], dtype, rng), _arrays([n], dtype, rng, 1e-3)
            fs, os_ = symopt_step([p[0].copy()], g)
            os_.parallel_threshold = 1 << 62
            fp, op = symopt_step([p[0].copy()], g)
            op.parallel_threshold = 0
            res = measure({"serial": fs, "threaded": fp}, rounds=rounds, budget=1.5)
            # (serial median, threaded median, median of per-round serial / threaded): the ratio decides
            out[(dname, n)] = (res["serial"]["median"], res["threaded"]["median"],
                               paired_ratio(res, "serial", "threaded"))
        # crossover: the smallest size from which the threaded kernel wins at every larger size
        mine = [(n, v) for (d, n), v in out.items() if d == dname and n != "crossover"]
        wins = [n for n, v in mine if v[2] > 1]
        loses = [n for n, v in mine if v[2] <= 1]
        cross = min([n for n in wins if all(m < n for m in loses)], default=None)
        out[(dname, "crossover")] = cross
        log(f"  {dname}: threaded kernel faster from {cross} elements on "
            f"(default threshold {_optmod.PARALLEL_THRESHOLD_BYTES // np.dtype(dtype).itemsize})")
    return out


_COMPILE_SCRIPT = textwrap.dedent(r"""
    import json, re, sys, time
    import numba, numpy as np

    @numba.njit
    def _warm(x):
        return x + 1
    _warm(1)                                           # numba's own first-compile start-up, not timed
    from symopt.runtime import kernels
    from symopt.runtime.layout import kernel_frame
    PACKED = re.compile(r"\bv(?:sqrt|div|mul|add|sub|fn?m(?:add|sub)\d*|max|min)p[sd]\b[^\n]*%([xyz])mm")
    SCALAR = re.compile(r"\bv(?:sqrt|div|mul|add|sub|fn?m(?:add|sub)\d*|max|min)s[sd]\b")
    for name in sys.argv[1:]:
        mod = kernels.load_builtin(name)
        for v in mod.FAMILY["variants"]:
            for suffix, dt in (("f32", np.float32), ("f64", np.float64)):
                z = np.zeros(0, np.int64)
                head = (z, z, *[np.zeros(0, dt) for _ in v["state"]], z, np.zeros((0, 4), np.int64))
                scal = np.zeros((1, max(1, v["nscalars"])))
                # the flat kernels' frame twins (what the optimizer compiles), on empty tables
                frame = kernel_frame(dt, head + (np.zeros(2, np.int64), scal, np.zeros((0, 1)),
                                                 np.zeros((2, 0), np.int64), z, True))
                kinds = [(v["prefix"] + "_" + suffix + par + "_frame", (frame,)) for par in ("", "_parallel")]
                red = v.get("reduce")
                if red is not None:          # reduction passes: (..., chunks, scal, ext), no work table
                    ext = np.zeros((0, v["nscalars"] + red["ntensor"]))
                    kinds += [(red["kernel"] + "_" + suffix + par, head + (scal, ext)) for par in ("", "_parallel")]
                for kname, args in kinds:
                    k = getattr(mod, kname)
                    t0 = time.perf_counter()
                    try:
                        k(*args)
                    except Exception as exc:
                        print(json.dumps({"rule": name, "variant": v["name"], "kernel": kname, "error": repr(exc)}),
                              flush=True)
                        continue
                    dt_s = time.perf_counter() - t0
                    asm = k.overloads[k.signatures[0]].library.get_asm_str()
                    widths = {"x": 0, "y": 0, "z": 0}
                    for m in PACKED.finditer(asm):
                        widths[m.group(1)] += 1
                    print(json.dumps({"rule": name, "variant": v["name"], "kernel": kname, "seconds": dt_s,
                                      "sigs": len(k.signatures), "packed_zmm": widths["z"],
                                      "packed_ymm": widths["y"], "packed_xmm": widths["x"],
                                      "scalar": len(SCALAR.findall(asm))}), flush=True)
""")


def phase_compile(log, cache_dir: str, workers: int = 2) -> list:
    """Target 7: cold compile of every built-in kernel into the empty ``cache_dir``, in ``workers`` processes.

    The measuring process then runs with the same NUMBA_CACHE_DIR, so no kernel is compiled twice.
    """
    names = elementwise_rules()
    parts = [names[i::workers] for i in range(workers)]
    procs = []
    for part in parts:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        procs.append(subprocess.Popen([sys.executable, "-c", _COMPILE_SCRIPT, *part], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    rows = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        if proc.returncode:
            raise RuntimeError(f"cold-compile run failed:\n{err[-2000:]}")
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    order = {n: i for i, n in enumerate(names)}
    rows.sort(key=lambda r: (order[r["rule"]], r["kernel"]))
    for r in rows:
        if "error" in r:
            log(f"  {r['kernel']}: {r['error']}")
    rows = [r for r in rows if "error" not in r]
    total = sum(r["seconds"] for r in rows)
    log(f"  {len(rows)} kernels, {total:.1f} s of compilation in all (max {max(r['seconds'] for r in rows):.2f} s)")
    return rows


def phase_startup(log) -> dict:
    """A fresh process with warm caches: import, Adam, one step (benchmarks/bench_midsize.py's warm start)."""
    return _bench_module("bench_midsize").warm_start(log)


def phase_check_in_cache(rounds, log, n=10 ** 4) -> dict:
    """The finiteness check alone, when the arrays fit in cache: check / ignore, no other peer."""
    rng = np.random.default_rng(6)
    out = {}
    for dtype in DTYPES:
        p, g = _arrays([n], dtype, rng), _arrays([n], dtype, rng, 1e-3)
        step, opt = symopt_step([p[0].copy()], g)
        res = measure({"check": step, "ignore": step}, rounds=rounds * 2, before=check_modes(opt))
        out[np.dtype(dtype).name] = paired_ratio(res, "check", "ignore")
    log(f"  n={n}: check / ignore " + ", ".join(f"{d} {v:.3f}" for d, v in out.items()))
    return {"n": n, "ratio": out}


def phase_fused_loop(rounds, log, quick) -> list:
    """Phase 9: examples/numba_loop.py's training loop fused into one njit function (Adam's generated
    ``element``) against the same loop calling ``symopt.optimizer`` once per step
    (benchmarks/bench_numba_loop.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("symopt_bench_numba_loop", HERE / "bench_numba_loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.measure(sizes=(16, 256), steps=100 if quick else 200, rounds=rounds + 3, log=log)


def _bench_module(name: str):
    """A benchmark module beside this file (bench_midsize.py...), loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"symopt_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def phase_midsize(rounds, log) -> dict:
    """Phase 12: Adam at 1e4-1e6 elements against the best same-traffic kernel, the fixed cost of step(),
    one fork/join of the threads and the warm start (benchmarks/bench_midsize.py)."""
    import types

    tools = types.SimpleNamespace(measure=measure, DTYPES=DTYPES, _TRAFFIC=_TRAFFIC, _read_once=_read_once,
                                  all_finite=all_finite, check_modes=check_modes)
    return _bench_module("bench_midsize").run(tools, rounds, log)


#: Phases ``--only NAME`` runs alone: (heading, run(rounds, log) -> result, report(result) -> markdown).
ALONE = {"midsize": ("[12] every size at the limit: mid-size tensors, fixed cost, wake-up, warm start",
                     phase_midsize, lambda res: _bench_module("bench_midsize").report(res))}


def run_alone(name: str, args) -> int:
    """``symopt bench --only NAME``: one phase in this process, its section written to ``results_NAME.md``."""
    out_dir = Path(args.out) if getattr(args, "out", None) else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    if getattr(args, "threads", None):
        symopt.set_num_threads(args.threads)
    heading, run, section = ALONE[name]
    print(heading, flush=True)
    load0 = os.getloadavg()[0]
    text = section(run(5 if getattr(args, "quick", False) else 20, lambda m: print(m, flush=True)))
    text += (f"\nMachine: {os.cpu_count()} cores, {symopt.get_num_threads()} threads (OMP_PROC_BIND: "
             f"{os.environ.get('OMP_PROC_BIND') or 'unset'}); load average {load0:.2f} "
             f"before, {os.getloadavg()[0]:.2f} after (a load near or above the core count makes threaded rows noisy).\n")
    print(text)
    (out_dir / f"results_{name}.md").write_text(text, encoding="utf-8")
    print(f"wrote {out_dir / f'results_{name}.md'}")
    return 0


def phase_memory(log) -> dict:
    """The peak of what one step allocates (tracemalloc) in a training loop's steady state: after the steps that
    set up what step() keeps once (the second with the same grads remembers their words, the third makes the
    kernel's frame for them)."""
    out = {}
    for n in (10 ** 5, 10 ** 7):
        p = [np.ones(n, np.float32)]
        g = [np.full(n, 1e-3, np.float32)]
        for label, thr in (("serial", 1 << 62), ("threaded", 0)):
            opt = symopt.optimizer(RULE, p)
            opt.parallel_threshold = thr
            for _ in range(4):
                opt.step(g)
            tracemalloc.start()
            opt.step(g)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            out[(label, n)] = peak
    log("  peak bytes traced during a step: " + ", ".join(f"{k[0]} n={k[1]:.0e}: {v}" for k, v in out.items()))
    return out


# ---------------------------------------------------------------------------- report
def machine_info(threads: int) -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
            "threads": threads, "numba threading layer": None}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
        flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        info["avx512f"] = " avx512f" in flags
    except OSError:
        info["cpu"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            info["memory"] = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    versions = {"symopt": symopt.__version__, "numpy": np.__version__, "numba": numba.__version__}
    import llvmlite

    versions["llvmlite"] = llvmlite.__version__
    for mod in ("torch", "jax", "optax"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = "not installed"
    info["versions"] = versions
    try:
        info["numba threading layer"] = numba.threading_layer()
    except Exception:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = "; ".join(f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')}, "
                                 f"{d.get('num_threads')} threads)" for d in threadpool_info())
    except Exception:
        info["blas"] = "?"
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE", "(unset)")
    info["OMP_PROC_BIND"] = os.environ.get("OMP_PROC_BIND")
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                        text=True).stdout.strip() or "?"
    except OSError:
        info["commit"] = "?"
    return info


def _fmt_t(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def plot(sizes_res: dict, thr: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    styles = {"same-traffic kernel": dict(color="k", ls="--", lw=2), "symopt": dict(color="C0", lw=2.5, marker="o"),
              "symopt (ignore)": dict(color="C0", ls=":", marker="."), "symopt serial": dict(color="C9", lw=1, marker="v"),
              "symopt threaded": dict(color="C4", lw=1, marker="^"), "numpy": dict(color="C2", marker="s"),
              "numpy (temporaries)": dict(color="C2", ls=":", marker="s"),
              "torch foreach": dict(color="C1", marker="D"), "torch fused": dict(color="C3", lw=2, marker="D"),
              "optax (jit)": dict(color="C5", marker="x")}
    for ax, dname in zip(axes, ("float32", "float64")):
        ns = sorted(n for d, n in sizes_res if d == dname)
        peers = list(sizes_res[(dname, ns[0])])
        for peer in peers:
            ys = [sizes_res[(dname, n)][peer] / n * 1e9 for n in ns]
            ax.plot(ns, ys, label=peer, **styles.get(peer, {}))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements (one tensor)")
        ax.set_ylabel("time per element (ns)")
        ax.set_title(f"Adam step, {dname}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[2]
    for dname, color in (("float32", "C0"), ("float64", "C3")):
        ns = sorted(n for d, n in thr if d == dname and n != "crossover")
        ax.plot(ns, [thr[(dname, n)][0] / n * 1e9 for n in ns], color=color, marker="v", label=f"serial {dname}")
        ax.plot(ns, [thr[(dname, n)][1] / n * 1e9 for n in ns], color=color, ls="--", marker="^",
                label=f"threaded {dname}")
    for dname, color in (("float32", "C0"), ("float64", "C3")):
        ax.axvline(_optmod.PARALLEL_THRESHOLD_BYTES // np.dtype(dname).itemsize, color=color, ls=":",
                   label=f"default threshold {dname}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("elements")
    ax.set_ylabel("time per element (ns)")
    ax.set_title("serial vs threaded kernel (Adam)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> int:
    """Parent: cold-compile phase into a fresh cache folder, then the measuring child process
    (NUMBA_CACHE_DIR = that folder; OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed, as they slow NumPy)."""
    if getattr(args, "only", None):
        return run_alone(args.only, args)
    if os.environ.get("SYMOPT_BENCH_CHILD"):
        return measure_all(args)
    quick = bool(getattr(args, "quick", False))
    out_dir = Path(args.out) if getattr(args, "out", None) else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    compile_json = out_dir / "compile_times.json"
    with tempfile.TemporaryDirectory(prefix="symopt-bench-") as tmp:
        compiled = not (quick or getattr(args, "no_compile_times", False))
        if compiled:
            print("[7] cold compile of every built-in kernel (empty numba cache)", flush=True)
            t0 = time.perf_counter()
            load0 = os.getloadavg()[0]
            rows = phase_compile(lambda m: print(m, flush=True), tmp)
            wall = time.perf_counter() - t0
            print(f"  ({wall:.0f} s wall)", flush=True)
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                    text=True).stdout.strip() or "?"
            compile_json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                "commit": commit, "wall": wall, "load": [load0, os.getloadavg()[0]],
                                                "rows": rows}, indent=1) + "\n")
            if getattr(args, "compile_only", False):
                print(f"wrote {compile_json}")
                return 0
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        env.update(SYMOPT_BENCH_CHILD="1", SYMOPT_BENCH_OPENBLAS=os.environ.get("OPENBLAS_CORETYPE", "(unset)"))
        if compiled:        # every kernel is in this cache now: the measuring process compiles nothing
            env["NUMBA_CACHE_DIR"] = tmp
        if not quick and compile_json.is_file():
            env["SYMOPT_BENCH_COMPILE"] = str(compile_json)
        argv = (["--quick"] if quick else []) + (["--out", str(args.out)] if getattr(args, "out", None) else []) \
            + (["--threads", str(args.threads)] if getattr(args, "threads", None) else [])
        return subprocess.run([sys.executable, "-m", "symopt", "bench", *argv], env=env).returncode


def measure_all(args) -> int:
    quick = bool(getattr(args, "quick", False))
    out_dir = Path(args.out) if getattr(args, "out", None) else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads or numba.config.NUMBA_NUM_THREADS
    symopt.set_num_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except Exception:
        pass
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    t_start = time.perf_counter()
    info = machine_info(threads)
    info["load"] = [os.getloadavg()[0]]
    compiled = json.loads(Path(os.environ["SYMOPT_BENCH_COMPILE"]).read_text()) \
        if os.environ.get("SYMOPT_BENCH_COMPILE") else {"rows": []}
    compile_rows = compiled["rows"]
    info["compile"] = {k: compiled.get(k) for k in ("date", "commit", "wall", "load")}
    log(f"symopt bench: {info['cpu']}, {info['cores']} cores, {threads} threads for every peer; rule {RULE!r}")
    rounds = 5 if quick else 12
    log("[1] at the limit (1e7 elements)")
    limit = phase_limit(10 ** 6 if quick else 10 ** 7, rounds if quick else 20, log,
                        names=[RULE, "sgd", "lion"] if quick else None)
    log("[2] Adam over sizes, every peer")
    sizes = [10 ** 2, 10 ** 4, 10 ** 6] if quick else [10 ** k for k in range(2, 8)]
    sizes_all = phase_sizes(sizes, rounds, log)
    sizes_res, sizes_ratio = sizes_all["times"], sizes_all["ratios"]
    log("[3] many tensors")
    many = phase_many(rounds, log)
    log("[4] small model")
    small = phase_small(rounds, log)
    log("[5] large")
    large = phase_large(10 ** 7 if quick else 10 ** 8, max(5, rounds // 2), log)
    log("[9] backends: Numba, torch (eager, compiled), JAX against torch fused and Optax")
    backends = phase_backends(10 ** 6 if quick else 10 ** 7, rounds, log)
    log("[6] threads")
    thr = phase_threshold(rounds, log, range(10, 21, 2) if quick else range(10, 23))
    log("[1] the check when the arrays fit in cache")
    incache = phase_check_in_cache(rounds, log)
    log("[9] matrix rules: Muon, float32")
    matrix = phase_matrix(3 if quick else 5, log, ((256, 256), (256, 1024), (1024, 256)) if quick else MUON_SHAPES)
    log("[9] matrix rules: Adafactor, float32")
    adafactor = phase_adafactor(3 if quick else 5, log, ((256, 256), (4, 64, 64)) if quick else ADAFACTOR_SHAPES)
    log("[9] Kronecker-factored rules: Shampoo and SOAP against pytorch-optimizer, float32")
    preconditioned = phase_preconditioned(3 if quick else 5, log,
                                          ((128, 128), (128, 512), (512, 128)) if quick else PRECONDITIONED_SHAPES)
    log("[7] start-up")
    startup = phase_startup(log)
    log("[8] memory")
    mem = phase_memory(log)
    log("[9] a training loop fused into one njit function (symopt.kernel) against one optimizer step per iteration")
    fused = phase_fused_loop(rounds, log, quick)
    log(ALONE["midsize"][0])
    midsize = phase_midsize(rounds if quick else 20, log)
    info["load"].append(os.getloadavg()[0])
    info["OPENBLAS_CORETYPE"] = os.environ.get("SYMOPT_BENCH_OPENBLAS", info["OPENBLAS_CORETYPE"])
    png = out_dir / "time_per_element.png"
    plot(sizes_res, thr, png)
    elapsed = time.perf_counter() - t_start
    text = report(info, limit, sizes_res, many, small, large, thr, compile_rows, startup, mem, elapsed, quick,
                  incache, fused, sizes_ratio, backends)
    text += matrix_report(matrix)
    text += adafactor_report(adafactor)
    text += preconditioned_report(preconditioned)
    text += ALONE["midsize"][2](midsize)
    (out_dir / "results.md").write_text(text, encoding="utf-8")
    log(f"wrote {out_dir / 'results.md'} and {png} in {elapsed:.0f} s")
    return 0


def _verdict(ok) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


def matrix_report(rows) -> str:
    """The Muon section of results.md."""
    L = ["\n## Matrix rules: Muon (float32)\n",
         "symopt runs Newton–Schulz in float32 through SciPy's BLAS (syrk for XXᵀ and A², gemm for the rest; "
         "in the r×r Gram space when the larger side is ≥ 3× the smaller), torch.optim.Muon in bfloat16. "
         "GFLOP/s: the flops symopt's BLAS calls execute per second of a whole symopt step (element passes "
         "included); fraction: of a plain sgemm (r×c)·(c×r) of the same sizes in the same run; torch's flops: "
         "the nominal flops of torch's algorithm (5 steps of XXᵀ, A·A, B·X) per second of the symopt step. "
         "vs torch: median of per-round time ratios of interleaved rounds (>1: symopt faster).\n",
         "| shape | path | symopt step | GFLOP/s | sgemm GFLOP/s | fraction of sgemm | torch's flops/s | "
         "torch.optim.Muon | vs torch |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        torch_t = f"{r['torch'] * 1e3:.1f} ms" if "torch" in r else "—"
        vs = f"{r['vs_torch']:.2f}×" if "vs_torch" in r else "—"
        L.append(f"| {r['shape'][0]}×{r['shape'][1]} | {'Gram' if r['gram'] else 'direct'} | "
                 f"{r['symopt'] * 1e3:.1f} ms | {r['gflops']:.0f} | {r['sgemm_gflops']:.0f} | {r['fraction']:.2f} | "
                 f"{r['nominal_gflops']:.0f} | {torch_t} | {vs} |")
    return "\n".join(L) + "\n"


def report(info, limit, sizes_res, many, small, large, thr, compile_rows, startup, mem, elapsed, quick,
           incache, fused, sizes_ratio, backends) -> str:
    L = []
    big = max(n for _, n in sizes_res)
    ok_limit = [r for r in limit if "error" not in r]
    worst_i = max(ok_limit, key=lambda r: r["ignore"]) if ok_limit else None
    worst_c = max(ok_limit, key=lambda r: r["check"]) if ok_limit else None
    small_n, cache_check = incache["n"], incache["ratio"]
    membound = [r for r in ok_limit if r["ignore"] < 1.5]
    slow = sorted({r["rule"] for r in ok_limit if r["ignore"] >= 1.5})
    worst_mi = max(membound, key=lambda r: r["ignore"]) if membound else None
    n_i = sum(r["ignore"] <= 1.10 for r in ok_limit)
    n_c = sum(r["check"] <= 1.25 for r in ok_limit)
    n_b = sum(r["check"] <= r["bound"] + 0.10 for r in ok_limit)
    n_r = sum(r["reads"] <= 1.10 for r in ok_limit)
    worst_r = max(ok_limit, key=lambda r: r["reads"]) if ok_limit else None
    vs_np = {d: sizes_ratio[(d, big)]["numpy"] for d in ("float32", "float64")}
    vs_npt = {d: sizes_ratio[(d, big)]["numpy (temporaries)"] for d in ("float32", "float64")}
    mt, st_, lt = many["times"], small["times"], large["times"]
    torch_ok = "torch fused" in mt
    mr, sr, lr_ = many["ratios"], small["ratios"], large["ratios"]
    r_many = mr["symopt"] if torch_ok else None
    r_flat = mr["symopt flat"] if torch_ok else None
    r_small = sr["torch fused"] if "torch fused" in st_ else None
    r_large = lr_["symopt"] if "torch fused" in lt else None
    cross = {d: thr.get((d, "crossover")) for d in ("float32", "float64")}
    L.append("# symopt benchmark results\n")
    L.append(f"Written by `make bench` (`python -m symopt bench{' --quick' if quick else ''}`) in {elapsed:.0f} s. "
             f"Rule: `{RULE}` (torch.optim.Adam's update) unless a row says otherwise. Times are minimums over "
             "round-robin repeats within this one run; ratios compare candidates of the same run. "
             "Ratios > 1 mean symopt is faster (peer time / symopt time), except in the *limit* rows, which are "
             "symopt time / same-traffic-kernel time (≤ target is good), each the median over rounds of the ratio "
             "of two candidates timed back to back in the same round.\n")
    L.append("## Machine\n")
    L.append(f"- CPU: {info.get('cpu')} ({info.get('cores')} cores, AVX-512F: {info.get('avx512f')}), "
             f"memory {info.get('memory', '?')}; {info.get('platform')}")
    L.append(f"- Threads for every peer: {info['threads']} (numba.set_num_threads, torch.set_num_threads); numba "
             f"threading layer: {info.get('numba threading layer')} (OMP_PROC_BIND: "
             f"{info.get('OMP_PROC_BIND') or 'unset'}); "
             "NumPy elementwise loops are single-threaded; JAX uses XLA's own pool")
    L.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
             + f"; Python {info['python']}; commit {info.get('commit')}")
    L.append(f"- BLAS (threadpoolctl): {info.get('blas')}; OPENBLAS_CORETYPE in the calling shell: "
             f"{info.get('OPENBLAS_CORETYPE')} (removed for the measuring process)")
    L.append(f"- 1-minute load average at start / end: {info['load'][0]:.2f} / {info['load'][-1]:.2f} "
             f"(other processes on the machine disturb timings; compare ratios, not absolute times)\n")
    L.append("## Targets\n")
    L.append("| # | target | measured | goal | verdict |")
    L.append("|---|---|---|---|---|")
    if worst_i:
        L.append(f"| 1 | at the limit, `on_nonfinite=\"ignore\"`, every elementwise rule × dtype at {limit_n(limit, quick)} "
                 f"(worst) | {worst_i['ignore']:.3f}× same-traffic ({worst_i['rule']} {worst_i['dtype']}) | ≤ 1.10× | "
                 f"{_verdict(worst_i['ignore'] <= 1.10)} |")
        L.append(f"| 1 | at the limit with the finiteness check (worst) | {worst_c['check']:.3f}× "
                 f"({worst_c['rule']} {worst_c['dtype']}) | ≤ 1.25× | {_verdict(worst_c['check'] <= 1.25)} |")
        med_r = float(np.median([r["reads"] for r in ok_limit]))
        L.append(f"| 1 | cost of the check, (check − ignore) / one measured read of the grads: median over the "
                 f"{len(ok_limit)} rows (worst row) | {med_r:.2f} reads ({worst_r['reads']:.2f}, {worst_r['rule']} "
                 f"{worst_r['dtype']}); {n_r} of {len(ok_limit)} rows within 1.10 | ≤ one extra read | "
                 f"{_verdict(med_r <= 1.10)} |")
        many_s = [r for r in ok_limit if r["nstate"] >= 2]
        few_s = [r for r in ok_limit if r["nstate"] < 2]
        L.append(f"| 1 | check ≤ 1.25×, by state buffers (the check's one read of the grads is ≤ 25% of the step only "
                 f"when the step reads ≥ 4 arrays) | ≥ 2 buffers: {sum(r['check'] <= 1.25 for r in many_s)} of "
                 f"{len(many_s)}; 0–1 buffers: {sum(r['check'] <= 1.25 for r in few_s)} of {len(few_s)} | ≤ 1.25× | — |")
        L.append(f"| 1 | rule × dtype pairs within target: ignore ≤ 1.10× / check ≤ 1.25× / check ≤ one extra grad "
                 f"read at the step's bandwidth + 0.10 | {n_i} / {n_c} / {n_b} of {len(ok_limit)} | all | — |")
        if worst_mi:
            L.append(f"| 1 | ignore, worst of the memory-bound rules (all but {', '.join(slow) or 'none'}) | "
                     f"{worst_mi['ignore']:.3f}× ({worst_mi['rule']} {worst_mi['dtype']}) | ≤ 1.10× | "
                     f"{_verdict(worst_mi['ignore'] <= 1.10)} |")
    L.append(f"| 1 | cost of the check when arrays fit in cache (n = {small_n:.0e}, check / ignore) | "
             + ", ".join(f"{d} {v:.2f}×" for d, v in cache_check.items()) + " | nearly nothing | — |")
    L.append(f"| 2 | NumPy in-place Adam without temporaries (13 array passes) / symopt at {big:.0e} | "
             + ", ".join(f"{d} {v:.1f}×" for d, v in vs_np.items())
             + f" | ≥ 10× | {_verdict(min(vs_np.values()) >= 10)} |")
    L.append(f"| 2 | NumPy Adam as usually written (in-place state, temporaries) / symopt at {big:.0e} | "
             + ", ".join(f"{d} {v:.1f}×" for d, v in vs_npt.items())
             + f" | ≥ 10× | {_verdict(min(vs_npt.values()) >= 10)} |")
    if torch_ok:
        L.append(f"| 3 | 240 separate arrays ({many['nparams'] / 1e6:.1f} M params, f32): torch fused / symopt | "
                 f"{r_many:.2f}× | ≥ 1.0× | {_verdict(r_many >= 1.0)} |")
        L.append(f"| 3 | same params in one FlatBuffer: torch fused (240 tensors) / symopt flat | {r_flat:.2f}× | "
                 f"≥ 1.2× | {_verdict(r_flat >= 1.2)} |")
    if r_small is not None:
        L.append(f"| 4 | 3 tensors, 11.5 k f32: torch fused / symopt | {r_small:.2f}× "
                 f"({_fmt_t(st_['torch fused'])} vs {_fmt_t(st_['symopt'])}) | ≥ 4× | {_verdict(r_small >= 4)} |")
    L.append(f"| 4 | fixed cost of `step()` (2 tensors, 650 f32: the step minus its kernel call, median of per-round "
             f"differences) | {_fmt_t(small['fixed']['beyond'])} (step {_fmt_t(small['fixed']['step'])}, kernel call "
             f"{_fmt_t(small['fixed']['kernel'])}) | a few µs | — |")
    if r_large is not None:
        L.append(f"| 5 | {large['n']:.0e} f32: torch fused / symopt | {r_large:.2f}× "
                 f"(ignore: {lr_['symopt (ignore)']:.2f}×) | ≥ 0.95× | {_verdict(r_large >= 0.95)} |")
    L.append(f"| 6 | threaded kernel faster from (measured) | f32 {cross['float32']}, f64 {cross['float64']} elements | "
             f"default `opt.parallel_threshold` = {_optmod.PARALLEL_THRESHOLD_BYTES} B / itemsize "
             f"(f32 {_optmod.PARALLEL_THRESHOLD_BYTES // 4}, f64 {_optmod.PARALLEL_THRESHOLD_BYTES // 8}), settable "
             "(`opt.parallel_threshold`, "
             "`symopt.set_num_threads`) | — |")
    L.append(f"| 7 | fresh process, warm cache: import + Adam + one step | {startup['seconds']:.2f} s, SymPy imported: "
             f"{startup['sympy']} | ≤ 1 s, no SymPy | {_verdict(startup['seconds'] <= 1 and not startup['sympy'])} |")
    if compile_rows:
        tot = sum(r["seconds"] for r in compile_rows)
        L.append(f"| 7 | cold compile, every built-in kernel ({len(compile_rows)} kernels, one signature each) | "
                 f"{tot:.0f} s in all, max {max(r['seconds'] for r in compile_rows):.2f} s | report | — |")
    mem_big = max(v for (lab, n), v in mem.items())
    L.append(f"| 8 | bytes allocated by one step (tracemalloc peak, steady state, n up to 1e7) | {mem_big} B "
             f"({', '.join(f'{lab} {n:.0e}: {v}' for (lab, n), v in mem.items())}) | nothing ∝ n | "
             f"{_verdict(mem_big < 65536)} |")
    L.append("")
    L.append("![time per element](time_per_element.png)\n")
    L.append(f"## 1. At the limit ({limit_n(limit, quick)} elements, one tensor)\n")
    L.append("Same-traffic kernel: one `prange` loop reading param, grad and each state buffer and writing param and "
             "each state buffer (`p = p + c*g`, `s = s*c + g*g`: the state stays finite and non-negative). GB/s = bytes the step must move / same-traffic time. "
             "*One extra grad read*: the ratio the finiteness check would cost if its read of the grads ran at the "
             "step's bandwidth, (streams + 1) / streams with 3 + 2·(state buffers) streams. *Check cost in grad "
             "reads*: (check − ignore) divided by the time of one `prange` pass that only reads the grads "
             "(measured in the same round-robin).\n")
    L.append("| rule | variant | dtype | state buffers | same-traffic | GB/s | ignore / same | check / same | "
             "one extra grad read | check cost in grad reads |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in limit:
        if "error" in r:
            L.append(f"| {r['rule']} | | {r['dtype']} | | error: {r['error']} | | | | | |")
        else:
            L.append(f"| {r['rule']} | {r['variant']} | {r['dtype']} | {r['nstate']} | {r['same_ms']:.2f} ms | "
                     f"{r['gbps']:.0f} | {r['ignore']:.3f} | {r['check']:.3f} | {r['bound']:.3f} | "
                     f"{r['reads']:.2f} |")
    L.append("\n## 2. Adam over sizes (one tensor): time per step\n")
    peers = list(next(iter(sizes_res.values())))
    L.append("| dtype | n | " + " | ".join(peers) + " |")
    L.append("|---|---|" + "---|" * len(peers))
    for (d, n), row in sorted(sizes_res.items()):
        L.append(f"| {d} | {n:.0e} | " + " | ".join(_fmt_t(row[p]) for p in peers) + " |")
    L.append("\nRatio peer / symopt (median over rounds of the per-round ratio):\n")
    L.append("| dtype | n | " + " | ".join(peers) + " |")
    L.append("|---|---|" + "---|" * len(peers))
    for (d, n), row in sorted(sizes_ratio.items()):
        L.append(f"| {d} | {n:.0e} | " + " | ".join(f"{row[p]:.2f}" for p in peers) + " |")
    L.append(f"\n## 3. Many tensors: {many['ntensors']} arrays, {many['nparams']:,} float32 params\n")
    L.append("Times are medians over rounds; the ratio is the median over rounds of torch fused's time / the "
             "candidate's in the same round.\n")
    L.append("| candidate | time | torch fused / candidate |")
    L.append("|---|---|---|")
    for k, v in mt.items():
        L.append(f"| {k} | {_fmt_t(v)} | {mr[k]:.2f} |" if torch_ok else f"| {k} | {_fmt_t(v)} | |")
    L.append("\nCost of the finiteness check (median over rounds of checked / unchecked time in the same round): "
             + ", ".join(f"{k} {v:.2f}×" for k, v in many["check"].items()) + ".")
    L.append("\n## 4. Small model: 3 tensors (100×110, 110, 390), float32\n")
    L.append("| candidate | time per step | peer / symopt |")
    L.append("|---|---|---|")
    for k, v in st_.items():
        L.append(f"| {k} | {_fmt_t(v)} | {sr[k]:.2f} |")
    L.append(f"\n## 5. Large: {large['n']:.0e} float32\n")
    L.append("| candidate | time per step | torch fused / candidate |")
    L.append("|---|---|---|")
    for k, v in lt.items():
        L.append(f"| {k} | {_fmt_t(v)} | {lr_[k]:.2f} |" if "torch fused" in lt else f"| {k} | {_fmt_t(v)} | |")
    L.append(f"\n## 9. Backends on this CPU: AdamW, one float32 tensor of {backends['n']:.0e}\n")
    L.append("The same rule through the Numba kernels, the generated torch module (eager, and `compile=True`: one "
             "Inductor graph) and the generated JAX module (`jax.jit`), beside torch.optim.AdamW and optax.adamw "
             "(`benchmarks/bench_devices.py`; on a GPU run that script). Ratio: median over rounds of the "
             "candidate's time / the reference's in the same round (< 1: faster than the reference).\n")
    L.append("| candidate | time per step | time / torch fused | time / optax adamw |")
    L.append("|---|---|---|---|")
    for k, r, rj, t in backends["rows"]:
        L.append(f"| {k} | {_fmt_t(t)} | {r:.2f} | {'' if rj is None else f'{rj:.2f}'} |")
    if backends["check"]:
        L.append("\nCost of the finiteness check (median over rounds of checked / unchecked time in the same round): "
                 + ", ".join(f"{k} {v:.2f}×" for k, v in backends["check"].items()) + ".")
    L.append("\n## 6. Serial against threaded kernel (Adam, one tensor)\n")
    L.append("Medians over rounds; the last column is the median of per-round serial / threaded ratios, "
             "from which the crossover is read.\n")
    L.append("| dtype | n | serial | threaded | serial / threaded |")
    L.append("|---|---|---|---|---|")
    for (d, n), v in thr.items():
        if n != "crossover":
            L.append(f"| {d} | {n} | {_fmt_t(v[0])} | {_fmt_t(v[1])} | {v[2]:.2f} |")
    L.append("\n## 10. A training loop fused into one njit function (`symopt.kernel`)\n")
    L.append("`examples/numba_loop.py`: a 2-16-1 tanh MLP (81 float64 weights, full batch of n points), its "
             "gradient and Adam's generated `element` for every weight inside one `@numba.njit` function, against "
             "the same compiled gradient followed by `symopt.optimizer`'s `step` from Python at each iteration "
             "(bit-identical weights). Ratio: median over interleaved rounds of per-step time / fused time.\n")
    L.append("| n | steps | fused | per-step optimizer | per-step / fused |")
    L.append("|---|---|---|---|---|")
    for r in fused:
        L.append(f"| {r['n']} | {r['steps']} | {_fmt_t(r['fused'])} | {_fmt_t(r['per_step'])} | {r['ratio']:.2f} |")
    if compile_rows:
        L.append("\n## 7. Cold compile time and vector width of every built-in kernel\n")
        c = info.get("compile") or {}
        L.append(f"Measured {c.get('date')} at commit {c.get('commit')} ({c.get('wall') or 0:.0f} s wall; load "
                 f"average {', '.join(f'{x:.2f}' for x in c.get('load') or [])}); stored in `compile_times.json`. "
                 "Each kernel compiled once (one signature) in a process with an empty `NUMBA_CACHE_DIR`; two such "
                 "processes ran side by side. Packed arithmetic instructions (sqrt/div/mul/add/fma/min/max on "
                 "`ps`/`pd`) counted by register width in the generated assembly; `scalar` counts `ss`/`sd` forms "
                 "(remainder loops, per-chunk set-up).\n")
        L.append("| rule | kernel | compile | signatures | packed zmm | packed ymm | packed xmm | scalar |")
        L.append("|---|---|---|---|---|---|---|---|")
        for r in compile_rows:
            L.append(f"| {r['rule']} | `{r['kernel']}` | {r['seconds']:.2f} s | {r['sigs']} | {r['packed_zmm']} | "
                     f"{r['packed_ymm']} | {r['packed_xmm']} | {r['scalar']} |")
    L.append("\n## Reproduce\n")
    L.append("```\nmake bench                      # or: .venv/bin/python -m symopt bench [--quick] [--threads N]\n```\n")
    return "\n".join(L) + "\n"


def limit_n(limit, quick) -> str:
    return "1e6" if quick else "1e7"
