"""Every code path the benchmarks time, checked against a float64 NumPy reference.

Paths: serial and threaded kernels, flat buffers (one segment per group), separate
tensors, many tensors of mixed sizes (empty ones too), None grads (per-tensor step
counts), several param groups, one thread; plus the work-table planner, the
start-up of a fresh process (warm kernel cache, no SymPy) and the memory a step
allocates.  Speed itself is never asserted here: ``symopt bench`` measures it.

Reference: torch.optim.Adam's update (torch 2.13, default options), in float64:

    m = β1 m + (1 − β1) g,   v = β2 v + (1 − β2) g²
    p = p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)

Tolerances: float64 elementwise relative 1e-12; float32 relative to each array's
largest magnitude 1e-5 (max-norm).
"""
import os
import subprocess
import sys
import textwrap
import tracemalloc
import warnings

import numpy as np
import pytest
from conftest import RTOL, CountedCalls, rel_err

import symopt
from symopt.runtime import layout
from symopt.runtime.optimizer import NonFiniteGradientError

RULE = "adam"
LR, B1, B2, EPS = 1e-2, 0.9, 0.999, 1e-8


class AdamRef:
    """float64 reference with per-tensor step counts (a None grad leaves a tensor as is)."""

    def __init__(self, params, lrs=None, options=None):
        self.p = [x.astype(np.float64) for x in params]
        self.m = [np.zeros_like(x) for x in self.p]
        self.v = [np.zeros_like(x) for x in self.p]
        self.t = [0] * len(self.p)
        self.lr = lrs or [LR] * len(self.p)
        self.b1, self.b2 = B1, B2
        #: per tensor: {"maximize": bool, "weight_decay": λ, "decoupled_weight_decay": bool} (torch's meaning)
        self.options = options or [{}] * len(self.p)

    def step(self, grads):
        for k, g in enumerate(grads):
            if g is None:
                continue
            g = g.astype(np.float64)
            o = self.options[k]
            g = -g if o.get("maximize") else g
            wd = o.get("weight_decay", 0.0)
            if o.get("decoupled_weight_decay"):
                self.p[k] = self.p[k] * (1 - self.lr[k] * wd)
            else:
                g = g + wd * self.p[k]
            self.t[k] += 1
            t = self.t[k]
            b1, b2 = self.b1, self.b2
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            denom = np.sqrt(self.v[k]) / np.sqrt(1 - b2**t) + EPS
            self.p[k] = self.p[k] - (self.lr[k] / (1 - b1**t)) * self.m[k] / denom

    def copy(self):
        out = AdamRef([])
        out.p, out.m, out.v = ([x.copy() for x in a] for a in (self.p, self.m, self.v))
        out.t, out.lr, out.b1, out.b2, out.options = list(self.t), list(self.lr), self.b1, self.b2, self.options
        return out


def _err(a, b, dtype) -> float:
    """float64: elementwise relative error; float32: max-norm relative error (a param near 0
    carries float32 rounding of its neighbours' magnitude, so elementwise is not meaningful)."""
    return rel_err(a, b, floor=0.0 if dtype == np.float64 else 1.0)


def _assert_close(opt, params, ref, dtype):
    tol = RTOL[dtype]
    for k, (p, r) in enumerate(zip(params, ref.p)):
        assert p.dtype == dtype
        assert _err(p, r, dtype) < tol, f"param {k}"
        st = opt.state[k]
        assert st["step"] == ref.t[k]
        assert _err(st["exp_avg"], ref.m[k], dtype) < tol, f"exp_avg {k}"
        assert _err(st["exp_avg_sq"], ref.v[k], dtype) < tol, f"exp_avg_sq {k}"


def _spied(opt):
    opt._kernel_serial = CountedCalls(opt._kernel_serial)
    opt._kernel_parallel = CountedCalls(opt._kernel_parallel)
    return opt


SIZES = [(7, 13), (0,), (1,), (300,), (4, 129), (65,)]


def _arrays(shapes, dtype, rng, scale=1.0):
    return [(rng.standard_normal(s) * scale).astype(dtype) for s in shapes]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["serial", "parallel"])
@pytest.mark.parametrize("flat", [False, True])
def test_paths_match_reference(dtype, mode, flat, rng):
    if flat:
        buf = symopt.FlatBuffer(SIZES, dtype)
        for a, x in zip(buf.arrays, _arrays(SIZES, dtype, rng)):
            a[...] = x
        params, gbuf = buf.arrays, buf.like()
    else:
        params, gbuf = _arrays(SIZES, dtype, rng), None
    ref = AdamRef(params)
    opt = _spied(symopt.optimizer(RULE, params, lr=LR))
    opt.parallel_threshold = 0 if mode == "parallel" else 1 << 62
    assert (opt._flat is not None) == flat
    symopt.set_num_threads(2 if mode == "parallel" and symopt.runtime.threads.max_threads() >= 2 else 1)
    try:
        for _ in range(4):
            grads = _arrays(SIZES, dtype, rng)
            if gbuf is not None:
                for a, g in zip(gbuf.arrays, grads):
                    a[...] = g
                grads = gbuf.arrays
            opt.step(grads)
            ref.step(grads)
    finally:
        symopt.set_num_threads(symopt.runtime.threads.max_threads())
    _assert_close(opt, params, ref, dtype)
    threaded = mode == "parallel" and symopt.runtime.threads.max_threads() >= 2
    assert (opt._kernel_parallel.calls, opt._kernel_serial.calls) == ((4, 0) if threaded else (0, 4))
    assert any(key[1] for key in opt._tables) == flat   # the one-segment table was used


def test_many_tensors_groups_and_none_grads(rng):
    """60 tensors in 3 groups (own lr), threaded, flat params; some grads None on some steps."""
    dtype = np.float32
    shapes = [(int(n),) for n in rng.integers(0, 3000, size=60)] + [(128, 96)]
    buf = symopt.FlatBuffer(shapes, dtype)
    for a, x in zip(buf.arrays, _arrays(shapes, dtype, rng)):
        a[...] = x
    params = buf.arrays
    groups = [{"params": params[:20], "lr": 0.03}, {"params": params[20:45]}, {"params": params[45:], "lr": 0.002}]
    lrs = [0.03] * 20 + [LR] * 25 + [0.002] * (len(params) - 45)
    ref = AdamRef(params, lrs)
    opt = _spied(symopt.optimizer(RULE, groups, lr=LR))
    opt.parallel_threshold = 0
    gbuf = buf.like()
    for step in range(6):
        for a, x in zip(gbuf.arrays, _arrays(shapes, dtype, rng)):
            a[...] = x
        grads = list(gbuf.arrays)
        if step in (1, 2, 4):      # the same set twice (cached table), then another one
            skip = [3, 21, 50] if step < 4 else [0, 44, len(grads) - 1]
            for k in skip:
                grads[k] = None
        opt.step(grads)
        ref.step(grads)
    _assert_close(opt, params, ref, dtype)
    assert len({s["step"] for s in opt.state.values()}) > 1   # the per-tensor-step path ran


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threaded", [False, True])
def test_groups_off_and_on_the_default_conditions_in_one_kernel_call(dtype, threaded, rng):
    """The kernels run a copy of the element loop with the conditions (maximize, decoupled weight decay) at
    their defaults as constants, and the general loop for rows whose values differ: one call with both."""
    shapes = [(3000,), (40, 50), (2500,)]
    params = _arrays(shapes, dtype, rng)
    options = [{}, {"maximize": True, "weight_decay": 0.1, "decoupled_weight_decay": True},
               {"weight_decay": 0.1}]      # coupled weight decay: the defaults' loop, with its arithmetic
    groups = [{"params": [p], **o} for p, o in zip(params, options)]
    ref = AdamRef(params, options=options)
    opt = _spied(symopt.optimizer(RULE, groups, lr=LR))
    opt.parallel_threshold = 0 if threaded else 10 ** 9
    for _ in range(4):
        grads = _arrays(shapes, dtype, rng)
        opt.step(grads)
        ref.step(grads)
    # max-norm in both dtypes: exp_avg is m + (1 - β1)(g - m) in the kernel and β1 m + (1 - β1) g here, and an
    # entry near zero (where g changes sign) differs in float64 by ~1e-12 of itself between the two forms
    for k, (p, r) in enumerate(zip(params, ref.p)):
        st = opt.state[k]
        for got, want, what in ((p, r, "param"), (st["exp_avg"], ref.m[k], "exp_avg"),
                                (st["exp_avg_sq"], ref.v[k], "exp_avg_sq")):
            assert rel_err(got, want, floor=1.0) < RTOL[dtype], f"{what} {k} (group {k})"
        assert st["step"] == ref.t[k] == 4
    parallel = threaded and symopt.runtime.threads.max_threads() >= 2
    assert (opt._kernel_parallel.calls > 0, opt._kernel_serial.calls > 0) == (parallel, not parallel)


def test_flat_params_with_separate_grads_and_nan_checks(rng):
    """Flat params but grads in separate arrays: per-tensor rows; a NaN anywhere changes nothing."""
    dtype = np.float64
    buf = symopt.FlatBuffer.from_arrays(_arrays(SIZES, dtype, rng))
    params = buf.arrays
    ref = AdamRef(params)
    opt = symopt.optimizer(RULE, params, lr=LR)
    grads = _arrays(SIZES, dtype, rng)
    opt.step(grads)
    ref.step(grads)
    assert not any(key[1] for key in opt._tables)
    for threshold in (0, 1 << 62):
        opt.parallel_threshold = threshold
        bad = _arrays(SIZES, dtype, rng)
        bad[-1][-1] = np.inf
        before = buf.flat.copy()
        with pytest.raises(NonFiniteGradientError):
            opt.step(bad)
        np.testing.assert_array_equal(buf.flat, before)
    gbuf = buf.like()                          # and a NaN in the one-segment path
    gbuf.arrays[2][0] = np.nan
    with pytest.raises(NonFiniteGradientError):
        opt.step(gbuf.arrays)
    _assert_close(opt, params, ref, dtype)


def test_one_thread_and_threshold_are_settable(rng):
    params = _arrays([(5000,)], np.float32, rng)
    opt = _spied(symopt.optimizer(RULE, params))
    assert opt.parallel_threshold == symopt.runtime.optimizer.PARALLEL_THRESHOLD_BYTES // 4
    opt.parallel_threshold = 100
    symopt.set_num_threads(1)
    try:
        assert symopt.get_num_threads() == 1
        opt.step(_arrays([(5000,)], np.float32, rng))
    finally:
        symopt.set_num_threads(symopt.runtime.threads.max_threads())
    assert opt._kernel_serial.calls == 1 and opt._kernel_parallel.calls == 0
    with pytest.raises(ValueError):
        symopt.set_num_threads(0)
    with pytest.raises(TypeError):
        symopt.set_num_threads(1.5)


REPEAT_CHANGES = ["nothing", "lr", "betas in place", "group replaced", "on_nonfinite", "threads", "state loaded",
                  "a None grad", "a grad moved"]


@pytest.mark.parametrize("change", REPEAT_CHANGES)
def test_repeated_grads_see_every_change_between_steps(change, rng):
    """The same grad arrays, refilled in place each step (a training loop's buffers): from the third step
    on, step() makes its last kernel call again without the Python of a full step.  Whatever that call
    was made from may change between two steps, and the next step must see it: a hyperparameter (a new
    value, a list changed in place, the group dict replaced), on_nonfinite, the worker count, the state
    (load_state_dict), a None grad, a grad moved to another buffer.  float32, compared by max-norm (after
    eight steps, float64's elementwise 1e-12 is below the rounding of the moments' near-zero entries)."""
    dtype = np.float32
    shapes = [(40, 30), (2000,)]
    params = _arrays(shapes, dtype, rng)
    grads = [np.zeros(s, dtype) for s in shapes]
    ref = AdamRef(params)
    opt = symopt.optimizer(RULE, [{"params": params, "betas": [B1, B2]}], lr=LR,
                           on_nonfinite="ignore" if change == "on_nonfinite" else "raise")
    opt.parallel_threshold = 0   # threaded where two threads are there: the worker count is part of the call
    full = CountedCalls(opt._step_all)
    opt._step_all = full
    saved = None
    try:
        for i in range(8):
            new = _arrays(shapes, dtype, rng, scale=0.1)
            for g, x in zip(grads, new):
                g[...] = x
            given = list(grads)
            if i == 5:   # the change, between the fifth step and the sixth
                if change == "lr":
                    opt.param_groups[0]["lr"] = ref.lr[0] = ref.lr[1] = 0.5 * LR
                elif change == "betas in place":
                    opt.param_groups[0]["betas"][0] = ref.b1 = 0.8
                elif change == "group replaced":
                    opt.param_groups[0] = {**opt.param_groups[0], "lr": 2 * LR}
                    ref.lr = [2 * LR] * 2
                elif change == "on_nonfinite":   # the call was made unchecked
                    opt.on_nonfinite = "".join(["rai", "se"])   # not the object the optimizer compares with
                    grads[1][7] = np.nan
                    before = [p.copy() for p in params]
                    with pytest.raises(NonFiniteGradientError):
                        opt.step(given)
                    assert all(np.array_equal(a, b) for a, b in zip(before, params))
                    grads[1][7] = new[1][7]
                elif change == "threads":
                    symopt.set_num_threads(1 if symopt.get_num_threads() > 1 else symopt.runtime.threads.max_threads())
                elif change == "state loaded":
                    opt.load_state_dict(saved[0])   # the moments and step counts of step 2; the params stay
                    ref.m, ref.v, ref.t = saved[1].m, saved[1].v, saved[1].t
                elif change == "a None grad":
                    given[0] = None
                elif change == "a grad moved":
                    grads[0] = given[0] = grads[0].copy()
            opt.step(given)
            ref.step(given)
            if i == 2:
                saved = (opt.state_dict(), ref.copy())
            if i == 4:   # steps 0-2 took the full path (the third made the call with the words table), 3-4 repeated it
                assert full.calls == 3
    finally:
        symopt.set_num_threads(symopt.runtime.threads.max_threads())
    _assert_close(opt, params, ref, dtype)
    # a new value, or another worker count, costs one full step, after which the new call repeats
    threads_changed = symopt.runtime.threads.max_threads() > 1
    if change == "nothing" or (change == "threads" and not threads_changed):
        assert full.calls == 3
    elif change in ("lr", "betas in place", "threads"):
        assert full.calls == 4


@pytest.mark.parametrize("nworkers", [1, 2, 3, 8])
def test_plan_rows_covers_every_element_once_and_balances(nworkers, rng):
    sizes = [int(n) for n in rng.integers(0, 5000, size=40)] + [100_000, 3]
    segments = [(j, 0, n, j % 3) for j, n in enumerate(sizes)]
    chunks, work = layout.plan_rows(segments, nworkers)
    assert chunks.dtype == np.int64 and work.dtype == np.int64
    assert len(work) == nworkers + 1 and work[0] == 0 and work[-1] == len(chunks)
    assert np.all(np.diff(work) >= 0)
    seen = [np.zeros(n, dtype=np.int64) for n in sizes]
    for j, lo, hi, row in chunks:
        assert 0 <= lo < hi <= sizes[j] and row == j % 3
        seen[j][lo:hi] += 1
    assert all(np.all(s == 1) for s in seen)
    per_worker = [int((chunks[a:b, 2] - chunks[a:b, 1]).sum()) for a, b in zip(work[:-1], work[1:])]
    total = sum(sizes)
    assert all(abs(w - total / nworkers) <= layout.ALIGN for w in per_worker), per_worker
    assert all(lo % layout.ALIGN == 0 for lo in np.cumsum(per_worker)[:-1])   # cuts on whole cache lines


def test_data_address_matches_array_interface():
    for a in (np.zeros(5), np.zeros((4, 6), np.float32)[1:], np.zeros(0)):
        assert layout.data_address(a) == a.__array_interface__["data"][0] or a.size == 0


@pytest.mark.skipif(not layout.HEADER_LAYOUT, reason="NumPy's array struct is laid out otherwise here")
@pytest.mark.parametrize("change", [None, "shape", "strides", "dtype", "read-only", "buffer"])
def test_array_words_see_every_change_a_step_checks(change):
    """words_unchanged is True for arrays as array_words saw them, False after any change step() must see."""
    arrays = [np.zeros((4, 6), np.float32), np.zeros(8)]
    table = layout.array_words(arrays)
    a = arrays[0]
    with warnings.catch_warnings():  # NumPy 2.4 deprecates setting strides and dtype; both still work in place
        warnings.simplefilter("ignore", DeprecationWarning)
        if change == "shape":
            a.shape = (6, 4)
        elif change == "strides":
            a.strides = (12, 4)
        elif change == "dtype":
            a.dtype = np.int32
        elif change == "read-only":
            a.flags.writeable = False
        elif change == "buffer":
            a.__setstate__((1, (4, 6), np.dtype(np.float32), False, np.ones(24, np.float32).tobytes()))
    assert layout.words_unchanged(table) is (change is None)
    assert layout.words_unchanged(layout.array_words(arrays))


def _step_allocations(n):
    """Peak bytes traced while stepping a 3-tensor model of ~n elements (all paths warmed up first)."""
    shapes = [(n // 2,), (n // 4,), (n - n // 2 - n // 4,)]
    rng = np.random.default_rng(0)
    peaks = {}
    for label, threshold, flat in (("serial", 1 << 62, False), ("parallel", 0, False), ("flat", 0, True)):
        if flat:
            buf = symopt.FlatBuffer(shapes, np.float32)
            params, grads = buf.arrays, buf.like().arrays
        else:
            params, grads = _arrays(shapes, np.float32, rng), _arrays(shapes, np.float32, rng, 1e-3)
        opt = symopt.optimizer(RULE, params)
        opt.parallel_threshold = threshold
        opt.step(grads)
        tracemalloc.start()
        try:
            opt.step(grads)
            opt.step(grads)
            peaks[label] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return peaks


def test_step_allocates_nothing_proportional_to_size():
    """NumPy reports its buffers to tracemalloc: a step's peak stays tiny and does not grow with n."""
    small, large = _step_allocations(30_000), _step_allocations(3_000_000)
    for label in small:
        assert large[label] < 16_384, (label, large[label])
        assert large[label] <= small[label] + 4096, (label, small[label], large[label])


def test_fresh_process_loads_cached_kernels_without_sympy(tmp_path):
    """Warm kernel cache: import, build Adam, one step; the kernel comes from numba's disk cache
    (no compilation), SymPy is never imported, nor numba's compiler registries (their
    ``numba.np.arraymath`` imports ``scipy.linalg``: symopt.cachedirs loads cached kernels with
    numba's runtime only), and a later compilation still finds them.  The wall time of this
    start-up is a benchmark figure (`symopt bench`, row "start-up"), not asserted here."""
    script = textwrap.dedent(f"""
        import sys, numpy as np, symopt
        params = [np.zeros((10, 10), np.float32), np.zeros(10, np.float32)]
        opt = symopt.optimizer({RULE!r}, params, lr=1e-3)
        opt.step([np.ones((10, 10), np.float32), np.ones(10, np.float32)])
        assert opt.state[0]["step"] == 1
        # Adam's first step moves every parameter by lr * g / (|g| + eps), here -1e-3 (float32)
        assert all(np.allclose(p, -1e-3, rtol=1e-6, atol=0) for p in params), params
        kernel = opt._kernel_serial
        compiler = [m for m in ("sympy", "numba.np.arraymath", "scipy.linalg") if m in sys.modules]
        print(",".join(compiler) or "-", sum(kernel.stats.cache_hits.values()), sum(kernel.stats.cache_misses.values()))
        if sys.argv[1:] != ["compile"]:
            raise SystemExit
        import numba   # numba's compiler loads its registries itself: array functions still compile
        total = numba.njit(lambda a: np.sum(a) + np.dot(a, a))
        assert total(np.arange(3.0)) == 8.0 and "numba.np.arraymath" in sys.modules
    """)
    env = dict(os.environ)
    run = [sys.executable, "-c", script]
    subprocess.run(run, env=env, check=True, capture_output=True, timeout=300)   # warms the cache
    out = subprocess.run([*run, "compile"], env=env, check=True, capture_output=True, text=True, timeout=120)
    imported, hits, misses = out.stdout.split()
    assert imported == "-", out.stdout + out.stderr
    assert int(hits) == 1 and int(misses) == 0, out.stdout


@pytest.mark.skipif(not layout.HEADER_LAYOUT, reason="NumPy's array struct is laid out otherwise here")
@pytest.mark.parametrize("change", [None, "grad reshaped", "grad dtype", "param read-only"])
def test_kernel_compares_the_words_before_writing(change, rng):
    """The flat kernel given the remembered call's words returns -2 and writes nothing when one changed,
    and steps as without them when none did."""
    params = _arrays([(4, 6), (5,)], np.float32, rng)
    grads = _arrays([(4, 6), (5,)], np.float32, rng)
    opt = symopt.optimizer(RULE, params, lr=LR)
    for _ in range(2):  # the second call with the same grads remembers their words
        opt.step(grads)
    table = opt._watch[1]
    assert table is not None and table.shape[1] > 0
    if change == "grad reshaped":
        grads[0].shape = (6, 4)
    elif change == "grad dtype":
        with warnings.catch_warnings():  # NumPy 2.4 deprecates setting dtype; it still changes it in place
            warnings.simplefilter("ignore", DeprecationWarning)
            grads[1].dtype = np.int32
    elif change == "param read-only":
        params[0].flags.writeable = False
    before = [p.copy() for p in params] + [s.copy() for s in opt._state]
    hyp = opt._hyp.copy()
    hyp[:, 0] = 3
    args = (opt._pptr, opt._gptr, *opt._state, opt._offs, opt._chunks, opt._work, opt._scal, hyp)
    nbad = opt._kernel_serial(layout.kernel_frame(opt.dtype, (*args, table, opt._no_steps, True)))
    after = [p.copy() for p in params] + [s.copy() for s in opt._state]
    if change is None:
        assert nbad == 0 and not np.array_equal(after[0], before[0])
    else:
        assert nbad == -2 and all(np.array_equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("nonfinite", [False, True])
def test_kernel_advances_the_step_counts_only_when_it_steps(nonfinite, rng):
    """Given the step counts, the flat kernel adds one to each and to every hyp row's t after its update,
    and leaves both as they were when it finds a NaN/inf grad (nothing written); the optimizer's counts
    then match the steps it took."""
    params = _arrays([(4, 6), (5,)], np.float32, rng)
    grads = _arrays([(4, 6), (5,)], np.float32, rng)
    opt = symopt.optimizer(RULE, params, lr=LR, on_nonfinite="skip")
    for _ in range(3):
        opt.step(grads)
    assert opt.step_counts.tolist() == [3, 3] and opt._hyp[0, 0] == 4  # the rows hold the next step's t
    if nonfinite:
        grads[1][2] = np.nan
    steps, hyp = np.array([7, 7]), opt._hyp.copy()
    args = (opt._pptr, opt._gptr, *opt._state, opt._offs, opt._chunks, opt._work, opt._scal, hyp)
    nbad = opt._kernel_serial(layout.kernel_frame(opt.dtype, (*args, opt._no_words, steps, True)))
    assert nbad == (1 if nonfinite else 0)
    assert steps.tolist() == ([7, 7] if nonfinite else [8, 8]) and hyp[0, 0] == (4 if nonfinite else 5)
    opt.step(grads)
    assert opt.step_counts.tolist() == ([3, 3] if nonfinite else [4, 4]) and opt.skipped_steps == int(nonfinite)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frame_twin_runs_the_flat_kernel_on_the_arrays_the_frame_names(dtype, rng):
    """``<kernel>_frame(frame)`` (the optimizer's entry point) does exactly what the flat-ABI kernel does given the
    arrays that ``layout.kernel_frame`` packed: same params, states, step counts and hyp rows, bit for bit."""
    from generated import adam as module
    params = _arrays([(4, 6), (5,)], dtype, rng)
    grads = _arrays([(4, 6), (5,)], dtype, rng)
    opt = symopt.optimizer(RULE, params, lr=LR)
    opt.step(grads)
    suffix = "f32" if dtype == np.float32 else "f64"
    results = []
    for twin in (True, False):
        p = [x.copy() for x in params]
        state = [s.copy() for s in opt._state]
        pptr = np.array([x.ctypes.data for x in p], dtype=np.int64)
        hyp, steps = opt._hyp.copy(), np.array([1, 1])
        args = (pptr, opt._gptr, *state, opt._offs, opt._chunks, opt._work, opt._scal.copy(), hyp,
                opt._no_words, steps, True)
        if twin:
            nbad = getattr(module, f"adam_{suffix}_frame")(layout.kernel_frame(dtype, args))
        else:
            nbad = getattr(module, f"adam_{suffix}")(*args)
        results.append((nbad, p, state, hyp, steps))
    (n1, p1, s1, h1, t1), (n2, p2, s2, h2, t2) = results
    assert n1 == n2 == 0 and t1.tolist() == t2.tolist() == [2, 2]
    assert all(np.array_equal(a, b) for a, b in zip(p1 + s1 + [h1], p2 + s2 + [h2]))
    assert not np.array_equal(p1[0], params[0])  # the step moved the copies


def test_kernel_frame_refuses_arrays_the_kernel_cannot_read(rng):
    """``layout.kernel_frame`` checks every array it packs (dtype, dimensions, C order, writeable where the kernel
    writes) and the argument count, naming the argument, before anything is called."""
    params = _arrays([(4, 6)], np.float32, rng)
    opt = symopt.optimizer(RULE, params, lr=LR)
    good = [opt._pptr, opt._gptr, *opt._state, opt._offs, opt._chunks, opt._work, opt._scal, opt._hyp,
            opt._no_words, opt._steps, True]
    frame = layout.kernel_frame(np.float32, good)
    assert frame.dtype == np.int64 and frame[0] == opt._pptr.ctypes.data and frame[-1] == 1
    ro = opt._scal.copy()
    ro.flags.writeable = False
    for i, bad, what in [(2, opt._state[0].astype(np.float64), "state 0"), (2, opt._state[0][::2], "state 0"),
                         (5, opt._chunks.ravel(), "chunks"), (7, ro, "scal"), (1, list(opt._gptr), "gptr")]:
        args = list(good)
        args[i] = bad
        with pytest.raises(ValueError, match=what):
            layout.kernel_frame(np.float32, args)
    with pytest.raises(TypeError, match="got 3 arguments"):
        layout.kernel_frame(np.float32, [opt._pptr, opt._gptr, 1])


#: Tensor sizes of the one-region tests: cut into 2 or 4 workers' row ranges, across tensor boundaries.
ONE_REGION_SIZES = (300000, 5, 700000)


def _flat_kernel_run(kernel, dtype, params, grads, states, segments, nworkers, check):
    """Copies of ``params``/``states`` after one call of the flat ``kernel`` over a table planned for
    ``nworkers`` workers, with the step counts and the hyp row's t it leaves, and its return value."""
    params = [p.copy() for p in params]
    states = [s.copy() for s in states]
    chunks, work = layout.plan_rows(segments, nworkers)
    assert len(work) == nworkers + 1
    offs = np.cumsum([0] + [p.size for p in params[:-1]]).astype(np.int64)
    pptr = np.array([p.ctypes.data for p in params], dtype=np.int64)
    gptr = np.array([g.ctypes.data for g in grads], dtype=np.int64)
    # adam's hyp row: t, lr, beta1, beta2, eps, weight_decay, maximize, decoupled_weight_decay
    hyp = np.array([[3.0, LR, B1, B2, EPS, 0.0, 0.0, 0.0]])
    steps = np.full(len(params), 2, dtype=np.int64)
    nbad = kernel(pptr, gptr, *states, offs, chunks, work, np.empty((1, 10)), hyp,
                  np.zeros((2, 0), dtype=np.int64), steps, check)
    return nbad, params, states, steps, hyp[0, 0]


def check_one_region(dtype, nworkers, seed=5, repeat=4) -> None:
    """The threaded adam kernel (one parallel region: claimed scan tasks, a barrier, the update) against the
    serial one, at the current numba thread count, over a table planned for ``nworkers`` workers: bit for bit
    equal without NaN/inf; with a NaN or inf in the first, a middle or the last worker's rows, it returns the
    count and writes nothing (params, states, step counts, the hyp row's t as they were), ``repeat`` times
    each: a barrier that let a worker update before every scan task was done writes in most calls on 2 free
    cores (1e6 elements: the threads' scans overlap)."""
    from symopt.runtime import kernels

    mod = kernels.load_builtin(RULE)
    suffix = "f32" if dtype == np.float32 else "f64"
    serial, threaded = getattr(mod, f"adam_{suffix}"), getattr(mod, f"adam_{suffix}_parallel")
    rng = np.random.default_rng(seed)
    params = _arrays(ONE_REGION_SIZES, dtype, rng)
    grads = _arrays(ONE_REGION_SIZES, dtype, rng, scale=1e-2)
    total = sum(ONE_REGION_SIZES)
    states = [(rng.standard_normal(total) * 1e-2).astype(dtype), (rng.random(total) * 1e-4).astype(dtype)]
    segments = [(j, 0, n, 0) for j, n in enumerate(ONE_REGION_SIZES)]
    want = _flat_kernel_run(serial, dtype, params, grads, states, segments, 1, True)
    assert want[0] == 0 and want[3].tolist() == [3, 3, 3] and want[4] == 4.0
    for check in (True, False):
        got = _flat_kernel_run(threaded, dtype, params, grads, states, segments, nworkers, check)
        assert got[0] == 0 and got[3].tolist() == [3, 3, 3] and got[4] == 4.0
        for a, b in zip(got[1] + got[2], want[1] + want[2]):
            assert np.array_equal(a, b)
    chunks, work = layout.plan_rows(segments, nworkers)
    for w, bad in ((0, np.nan), (nworkers // 2, np.inf), (nworkers - 1, np.nan)):
        j, lo, hi, _ = chunks[work[w]]
        g = [x.copy() for x in grads]
        g[j][(lo + hi) // 2] = bad
        for _ in range(repeat):
            nbad, p, s, steps, t = _flat_kernel_run(threaded, dtype, params, g, states, segments, nworkers, True)
            assert nbad == 1, (w, nbad)
            assert all(np.array_equal(a, b) for a, b in zip(p + s, params + states)), f"worker {w}: written"
            assert steps.tolist() == [2, 2, 2] and t == 3.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_checked_step_is_serial_bit_for_bit_and_writes_nothing_on_nan(dtype):
    """Workers as threads, and more workers than threads (one thread runs every prange iteration: its
    first claims every scan task, so the barrier never waits on an iteration that has not started)."""
    before = symopt.get_num_threads()
    try:
        for nthreads in sorted({1, min(2, symopt.runtime.threads.max_threads())}):
            symopt.set_num_threads(nthreads)
            for nworkers in (2, 4):
                check_one_region(dtype, nworkers)
    finally:
        symopt.set_num_threads(before)


@pytest.mark.parametrize("layer", ["workqueue", "omp"])
def test_threaded_checked_step_under_each_threading_layer(layer):
    """The same in a fresh process under numba's ``workqueue`` and ``omp`` threading layers (float32,
    2 and 4 workers, all threads and one), with a timeout: a barrier that deadlocks fails here."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numba, numpy as np
        import symopt, test_perf_paths
        try:
            for nthreads in sorted({{1, min(2, numba.config.NUMBA_NUM_THREADS)}}):
                numba.set_num_threads(nthreads)
                for nworkers in (2, 4):
                    test_perf_paths.check_one_region(np.float32, nworkers)
        except ValueError as exc:
            if "threading layer" in str(exc):
                print("unavailable:", exc)
                raise SystemExit(0)
            raise
        print("layer", numba.threading_layer())
    """)
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    if out.stdout.startswith("unavailable"):
        pytest.skip(f"numba's {layer} threading layer cannot be loaded here: {out.stdout.strip()}")
    assert out.stdout.split() == ["layer", layer]
