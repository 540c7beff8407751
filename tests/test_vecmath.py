"""The vectorizable exp, tanh and cube root that kernels call (templates/_vecmath.jinja).

They are taken from the checked-in modules that use them (diffgrad: exp, madgrad: cube
root, nn_act_tanh: tanh) and run in a compiled loop, as a kernel runs them.  Reference: NumPy's exp and tanh
in float64; the cube root NumPy's float64 cbrt refined by one Newton step in long double (NumPy's own
float64 cbrt is up to 3 ulp off on some CPUs, measured against mpmath); each rounded to float32 for
the float32 helpers.  Tolerances in
units in the last place of the result's dtype: exp 1 ulp (float32) / 4 ulp (float64),
cube root 1 ulp (both), tanh 3 ulp (float32) / 6 ulp (float64); zeros, infinities, NaN, negative arguments, subnormal arguments
and results must match exactly (NaN where np.power gives NaN).
"""

import numba
import numpy as np
import pytest

from symopt.generated import diffgrad, madgrad, nn_act_tanh

EXP_ULP = {np.float32: 1.0, np.float64: 4.0}
CBRT_ULP = {np.float32: 1.0, np.float64: 1.0}
TANH_ULP = {np.float32: 3.0, np.float64: 6.0}


def _looped(fn):
    @numba.njit(error_model="numpy")
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = fn(x[i])
    return run


_EXP = {np.float32: _looped(diffgrad._vexp_f32), np.float64: _looped(diffgrad._vexp_f64)}
_CBRT = {np.float32: _looped(madgrad._vcbrt_f32), np.float64: _looped(madgrad._vcbrt_f64)}
_TANH = {np.float32: _looped(nn_act_tanh._vtanh_f32), np.float64: _looped(nn_act_tanh._vtanh_f64)}


def _cbrt_reference(x):
    """The real cube root of float64 ``x`` > 0 to ~1e-19 relative: y = NumPy's cbrt, then one Newton step
    y - (y³ - x) / (3y²) in x87 long double (64-bit significand); mpmath where long double is float64."""
    if np.finfo(np.longdouble).nmant < 60:
        import mpmath

        with mpmath.workprec(128):
            return np.array([mpmath.cbrt(mpmath.mpf(float(v))) for v in x], dtype=np.float64)
    y = np.cbrt(x).astype(np.longdouble)
    return y - (y * y * y - x.astype(np.longdouble)) / (3 * y * y)


def _ulps(got, want, dtype):
    """|got - want| in units of the spacing of ``want`` in ``dtype`` (finite nonzero ``want``)."""
    spacing = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want.astype(np.float64)) / spacing


def _special_mismatches(x, got, want):
    """Arguments whose result is zero, infinite or NaN in either, and differs (NaN == NaN)."""
    special = ~np.isfinite(want) | (want == 0) | ~np.isfinite(got) | (got == 0)
    same = ((got == want) & (np.signbit(got) == np.signbit(want))) | (np.isnan(got) & np.isnan(want))
    return [(float(a), float(b), float(c)) for a, b, c in zip(x[special & ~same], got[special & ~same],
                                                              want[special & ~same])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_exp_against_numpy(dtype):
    rng = np.random.default_rng(11)
    fi = np.finfo(dtype)
    lo, hi = (-110.0, 95.0) if dtype == np.float32 else (-760.0, 720.0)
    top, bottom = float(np.log(fi.max)), float(np.log(fi.smallest_subnormal))
    x = np.concatenate([
        rng.uniform(lo, hi, 400_000), rng.uniform(-1, 1, 100_000), rng.uniform(-1e-6, 1e-6, 10_000),
        np.linspace(top - 1, top + 1, 2001), np.linspace(bottom - 1, bottom + 1, 2001),
        np.log(fi.tiny) + np.linspace(-5, 5, 2001),                     # results around the subnormal edge
        [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, fi.tiny, -fi.tiny],
    ]).astype(dtype)
    got = np.empty_like(x)
    _EXP[dtype](x, got)
    with np.errstate(over="ignore", under="ignore"):
        want = np.exp(x.astype(np.float64)).astype(dtype)
    assert _special_mismatches(x, got, want) == []
    normal = np.isfinite(want) & (np.abs(want) >= fi.tiny)
    assert _ulps(got[normal], want[normal], dtype).max() <= EXP_ULP[dtype]
    sub = np.isfinite(want) & (want != 0) & ~normal                  # subnormal results: absolute, in units of the smallest
    assert np.abs(got[sub].astype(np.float64) - want[sub]).max() <= float(fi.smallest_subnormal)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cube_root_against_numpy(dtype):
    rng = np.random.default_rng(12)
    fi = np.finfo(dtype)
    logs = rng.uniform(np.log(float(fi.smallest_subnormal)), np.log(float(fi.max)), 500_000)
    x = np.concatenate([
        np.exp(logs), rng.uniform(0, 10, 100_000), np.arange(0, 2000, dtype=np.float64) ** 3,
        2.0 ** np.arange(-1074 if dtype == np.float64 else -149, 128 if dtype == np.float32 else 1024),
        [0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, -8.0, -fi.tiny, fi.max, fi.tiny, fi.smallest_subnormal],
    ])
    x = x[np.isfinite(x.astype(dtype)) | ~np.isfinite(x)].astype(dtype)
    got = np.empty_like(x)
    _CBRT[dtype](x, got)
    with np.errstate(invalid="ignore"):
        want = np.power(x.astype(np.float64), 1.0 / 3.0)             # NaN for x < 0, as the rules' x**(1/3)
        pos = (x > 0) & np.isfinite(x)
        want[pos] = _cbrt_reference(x[pos].astype(np.float64)).astype(np.float64)
        want = want.astype(dtype)
    assert _special_mismatches(x, got, want) == []
    ok = np.isfinite(want) & (want != 0)
    assert _ulps(got[ok], want[ok], dtype).max() <= CBRT_ULP[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_tanh_against_numpy(dtype):
    rng = np.random.default_rng(13)
    fi = np.finfo(dtype)
    x = np.concatenate([
        rng.uniform(-25, 25, 300_000), rng.uniform(-1, 1, 300_000), rng.uniform(-1e-3, 1e-3, 10_000),
        np.linspace(0.16, 0.19, 20_001), -np.linspace(0.16, 0.19, 20_001),     # around the expm1 switch
        np.exp(rng.uniform(np.log(float(fi.smallest_subnormal)), 0, 50_000)) * rng.choice([-1, 1], 50_000),
        [0.0, -0.0, np.inf, -np.inf, np.nan, 9.0, 19.0, 400.0, -400.0, fi.max, -fi.max, fi.tiny, -fi.tiny],
    ]).astype(dtype)
    got = np.empty_like(x)
    _TANH[dtype](x, got)
    want = np.tanh(x.astype(np.float64)).astype(dtype)
    assert _special_mismatches(x, got, want) == []
    ok = np.isfinite(want) & (want != 0)
    assert _ulps(got[ok], want[ok], dtype).max() <= TANH_ULP[dtype]


def test_kernels_that_use_them_call_no_libm():
    """The point of the helpers: the float32 kernels of diffgrad and madgrad call no scalar libm
    exp/pow (which would keep the element loop from vectorizing), and use 512- or 256-bit vectors."""
    import re

    import symopt

    for name, mod, libm in (("diffgrad", diffgrad, r"\b(expf|exp)\b"), ("madgrad", madgrad, r"\b(powf|pow|cbrtf)\b")):
        p = np.linspace(-1, 1, 64, dtype=np.float32)
        symopt.optimizer(name, [p]).step([np.full(64, 0.5, np.float32)])      # compiles the serial kernel
        kernel = getattr(mod, f"{name}_f32_frame")   # the optimizer's entry point, the flat kernel inlined
        fresh = numba.njit(error_model="numpy", nogil=True)(kernel.py_func)   # numba hides cached code's assembly
        fresh.compile(kernel.signatures[0])
        asm = fresh.inspect_asm(kernel.signatures[0])
        code = "\n".join(line.split("#")[0] for line in asm.splitlines())
        assert re.search(libm, code) is None, name
        assert re.search(r"%[zy]mm", code) is not None, name
    x = np.linspace(-3, 3, 64, dtype=np.float32)
    nn_act_tanh.forward_f32(x, np.empty_like(x))
    fresh = numba.njit(error_model="numpy", nogil=True)(nn_act_tanh.forward_f32.py_func)
    fresh.compile(nn_act_tanh.forward_f32.signatures[0])
    code = "\n".join(line.split("#")[0] for line in fresh.inspect_asm(fresh.signatures[0]).splitlines())
    assert re.search(r"\b(tanhf|tanh|expf)\b", code) is None
