"""Every function of the registry (symopt/functions.py), end to end.

For each record: the reverse sweep derives it, the printers print it, the audit accepts the
printed module, and the compiled code's value and gradient match an independent reference:

* values: mpmath at 50 digits, through the closed forms below (not the registry's mpmath field);
* gradients: ``mpmath.diff`` of those closed forms at smooth points, and the stated convention
  at kinks (|x|'(0) = sign(0) = 0, H' = floor' = ceiling' = 0, Max/Min ties split evenly,
  ∂ Mod(a, b)/∂b = −floor(a/b)); central finite differences at smooth points;
* PyTorch autograd wherever torch implements the derivative (all but heaviside).

Tolerances, relative to max(1, |reference|):

=========================  =========  =========
check                      float64    float32
=========================  =========  =========
value vs mpmath            1e-14      1e-6
gradient vs mpmath         1e-13      4e-6
gradient vs central FD     1e-6       5e-3
=========================  =========  =========

float64 runs through ``symopt.gradient``; float32 through a Numba function whose body is
``KernelPrinter(..., "float32")`` output only (audited before it runs).
"""
import string

import mpmath
import numpy as np
import pytest
import sympy as sp
from conftest import rel_err

import symopt
from symopt.codegen.audit import audit_module
from symopt.codegen.printers import KernelPrinter, ScalarPrinter
from symopt.derive.reverse import reverse_sweep
from symopt.functions import BY_NAME, REGISTRY
from symopt.rulebook.parse import expr_from_data, expr_to_data, parse_expression
from symopt.rulebook import RuleError
from symopt.rulebook.validate import check_expression

X, Y = sp.symbols("x y")
TOL = {"float64": {"value": 1e-14, "grad": 1e-13, "fd": 1e-6},
       "float32": {"value": 1e-6, "grad": 4e-6, "fd": 5e-3}}
FD_STEP = {"float64": 1e-6, "float32": 2.0 ** -7}


def _mp_mod(a, b):
    return a - b * mpmath.floor(a / b)


def _mp_heaviside(x):
    return mpmath.mpf(0.5) if x == 0 else mpmath.mpf(1 if x > 0 else 0)


def _mp_sign(x):
    return mpmath.mpf(0 if x == 0 else (1 if x > 0 else -1))


# name: (SymPy expression in x [, y], mpmath closed form, smooth points, {kink point: convention gradient}).
# Points are exact in float32, so both dtypes see the same inputs.
CASES = {
    "exp": (sp.exp(X), mpmath.exp, [(-1.5,), (0.25,), (2.0,)], {}),
    "log": (sp.log(X), mpmath.log, [(0.125,), (1.5,), (7.0,)], {}),
    "sin": (sp.sin(X), mpmath.sin, [(-2.0,), (0.5,), (3.0,)], {}),
    "cos": (sp.cos(X), mpmath.cos, [(-2.0,), (0.5,), (3.0,)], {}),
    "tan": (sp.tan(X), mpmath.tan, [(-1.0,), (0.25,), (1.25,)], {}),
    "tanh": (sp.tanh(X), mpmath.tanh, [(-3.0,), (0.5,), (2.0,)], {}),
    "sinh": (sp.sinh(X), mpmath.sinh, [(-2.0,), (0.5,), (3.0,)], {}),
    "cosh": (sp.cosh(X), mpmath.cosh, [(-2.0,), (0.5,), (3.0,)], {}),
    "atan": (sp.atan(X), mpmath.atan, [(-4.0,), (0.5,), (2.0,)], {}),
    "erf": (sp.erf(X), mpmath.erf, [(-1.5,), (0.25,), (2.0,)], {}),
    "log1p": (BY_NAME["log1p"].sympy(X), mpmath.log1p, [(-0.5,), (2.0 ** -10,), (3.0,)], {}),
    "expm1": (BY_NAME["expm1"].sympy(X), mpmath.expm1, [(-2.0,), (2.0 ** -10,), (1.5,)], {}),
    "Abs": (sp.Abs(X), abs, [(-1.5,), (2.25,)], {(0.0,): (0.0,)}),
    "sign": (sp.sign(X), _mp_sign, [(-1.5,), (2.25,)], {(0.0,): (0.0,)}),
    "Heaviside": (sp.Heaviside(X), _mp_heaviside, [(-1.5,), (2.25,)], {(0.0,): (0.0,)}),
    "Max": (sp.Max(X, Y), lambda a, b: max(a, b), [(1.5, -0.5), (-2.0, 0.75)], {(1.25, 1.25): (0.5, 0.5)}),
    "Min": (sp.Min(X, Y), lambda a, b: min(a, b), [(1.5, -0.5), (-2.0, 0.75)], {(1.25, 1.25): (0.5, 0.5)}),
    "floor": (sp.floor(X), mpmath.floor, [(-1.5,), (2.25,)], {(2.0,): (0.0,)}),
    "ceiling": (sp.ceiling(X), mpmath.ceil, [(-1.5,), (2.25,)], {(2.0,): (0.0,)}),
    "Mod": (sp.Mod(X, Y), _mp_mod, [(5.5, 2.0), (-5.5, 2.0), (5.5, -2.0)], {(4.0, 2.0): (1.0, -2.0)}),
}
# Registry functions whose derivative torch does not implement (their torch value is still compared).
TORCH_NO_GRAD = {"Heaviside"}


def _symbols(name):
    return (X, Y)[:len(CASES[name][2][0])]


def _mp_reference(name, point):
    """(value, gradient) from the closed form at 50 digits; ``mpmath.diff`` at smooth points."""
    expr, f, _, kinks = CASES[name]
    with mpmath.workdps(50):
        args = [mpmath.mpf(v) for v in point]
        value = float(f(*args))
        if point in kinks:
            return value, tuple(kinks[point])
        n = len(args)
        grad = tuple(float(mpmath.diff(f, args, tuple(int(i == j) for j in range(n)))) for i in range(n))
    return value, grad


def _close(got, ref, tol) -> bool:
    return abs(got - ref) <= tol * max(1.0, abs(ref))


def _all_points(name):
    _, _, smooth, kinks = CASES[name]
    return [(p, False) for p in smooth] + [(p, True) for p in kinks]


def test_every_registry_entry_has_a_case():
    assert set(CASES) == set(BY_NAME), f"missing: {set(BY_NAME) - set(CASES)}, unknown: {set(CASES) - set(BY_NAME)}"
    for name, (expr, *_rest) in CASES.items():
        assert type(expr) is BY_NAME[name].sympy, name


# ------------------------------------------------------------------ float64: symopt.gradient
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_float64_matches_mpmath_and_finite_differences(name):
    expr = CASES[name][0]
    syms = _symbols(name)
    f = symopt.gradient(expr, syms)
    tol = TOL["float64"]
    for point, kink in _all_points(name):
        value, grad = f(np.array(point))
        ref_value, ref_grad = _mp_reference(name, point)
        assert _close(value, ref_value, tol["value"]), (name, point, value, ref_value)
        for g, r in zip(grad, ref_grad):
            assert _close(g, r, tol["grad"]), (name, point, grad, ref_grad)
        if kink:
            continue
        for i in range(len(point)):
            h = FD_STEP["float64"] * max(1.0, abs(point[i]))
            up, down = np.array(point), np.array(point)
            up[i] += h
            down[i] -= h
            fd = (f.value(up) - f.value(down)) / (up[i] - down[i])
            assert _close(grad[i], fd, tol["fd"]), (name, point, i, grad[i], fd)


# ------------------------------------------------------------------ float32: printed kernel code
class _Args(string.Formatter):
    """Formats a registry template with plain argument text (``{0:p}`` parenthesized)."""

    def format_field(self, value, format_spec):
        return f"({value})" if format_spec == "p" else str(value)


def _float32_kernel(expr, syms):
    """A numba function ``(x[, y]) -> (value, (∂x[, ∂y]))`` printed by KernelPrinter("float32")."""
    inputs = tuple(sp.Symbol(f"p{i}") for i in range(len(syms)))
    sweep = reverse_sweep(expr.xreplace(dict(zip(syms, inputs))), inputs)
    names = {s: s.name for s in inputs}
    names.update({s: s.name for s, _ in (*sweep.forward, *sweep.reverse)})
    pr = KernelPrinter(names, "float32")
    body = [f"    {names[s]} = {pr.doprint(e)}" for s, e in (*sweep.forward, *sweep.reverse)]
    grads = ", ".join(pr.doprint(g) for g in sweep.grads)
    src = ("import math\nimport numba\nimport numpy as np\n\n\n@numba.njit(cache=False)\n"
           f"def kernel({', '.join(names[s] for s in inputs)}):\n" + "\n".join(body)
           + f"\n    return {pr.doprint(sweep.value)}, ({grads},)\n")
    audit_module(src, "<test float32 kernel>")
    scope: dict = {}
    exec(compile(src, "<test float32 kernel>", "exec"), scope)  # noqa: S102 - audited printer output
    return scope["kernel"], src


@pytest.mark.parametrize("name", sorted(CASES))
def test_printed_float32_kernel_matches_mpmath_and_finite_differences(name):
    expr = CASES[name][0]
    kernel, src = _float32_kernel(expr, _symbols(name))
    assert "np.float64" not in src
    tol = TOL["float32"]
    for point, kink in _all_points(name):
        args = [np.float32(v) for v in point]
        value, grad = kernel(*args)
        ref_value, ref_grad = _mp_reference(name, point)
        assert _close(float(value), ref_value, tol["value"]), (name, point, value, ref_value)
        for g, r in zip(grad, ref_grad):
            assert _close(float(g), r, tol["grad"]), (name, point, grad, ref_grad)
        if kink:
            continue
        for i in range(len(point)):
            h = np.float32(FD_STEP["float32"] * max(1.0, abs(point[i])))
            up, down = list(args), list(args)
            up[i] = np.float32(args[i] + h)
            down[i] = np.float32(args[i] - h)
            fd = (float(kernel(*up)[0]) - float(kernel(*down)[0])) / (float(up[i]) - float(down[i]))
            assert _close(float(grad[i]), fd, tol["fd"]), (name, point, i, grad[i], fd)


# ------------------------------------------------------------------ the other printers
@pytest.mark.parametrize("name", sorted(CASES))
def test_scalar_printer_output_runs_and_matches_mpmath(name):
    expr = CASES[name][0]
    syms = _symbols(name)
    names = {s: s.name for s in syms}
    src = f"import math\n\n\ndef f({', '.join(names.values())}):\n    return {ScalarPrinter(names).doprint(expr)}\n"
    audit_module(src, "<test scalar>")
    scope: dict = {}
    exec(compile(src, "<test scalar>", "exec"), scope)  # noqa: S102 - audited printer output
    for point, _ in _all_points(name):
        got = scope["f"](*point)
        assert isinstance(got, float), (name, type(got))
        assert _close(got, _mp_reference(name, point)[0], TOL["float64"]["value"]), (name, point, got)


@pytest.mark.parametrize("fn", REGISTRY, ids=lambda f: f.name)
def test_kernel_printers_print_every_function(fn):
    expr = CASES[fn.name][0]
    names = {X: "x", Y: "y"}
    for dtype, ctor in (("float32", "np.float32"), ("float64", "np.float64")):
        plain = KernelPrinter(names, dtype)
        text = plain.doprint(expr)
        assert text and not plain.helpers
        other = "np.float64" if dtype == "float32" else "np.float32"
        assert other not in text, text
        vector = KernelPrinter(names, dtype, vector_math=True)
        vtext = vector.doprint(expr)
        if fn.vector_helper:
            assert vtext == f"_v{fn.vector_helper}_{dtype.replace('float', 'f')}(x)"
            assert vector.helpers == {fn.vector_helper}
        else:
            assert vtext == text and not vector.helpers


def test_printers_refuse_functions_outside_the_registry():
    for expr in (sp.acos(X), sp.gamma(X), sp.Function("g")(X), sp.frac(X)):
        for pr in (KernelPrinter({X: "x"}, "float32"), ScalarPrinter({X: "x"})):
            with pytest.raises(NotImplementedError):
                pr.doprint(expr)


# ------------------------------------------------------------------ parser and validator
@pytest.mark.parametrize("fn", REGISTRY, ids=lambda f: f.name)
def test_parser_and_validator_follow_the_registry(fn):
    expr = CASES[fn.name][0]
    arg_text = ", ".join(s.name for s in _symbols(fn.name))
    for name in fn.parse_names:
        parsed = parse_expression(f"{name}({arg_text})")
        assert parsed == expr and type(parsed) is fn.sympy, (name, parsed)
    if not fn.parse_names:
        with pytest.raises(RuleError, match="is not allowed"):
            parse_expression(f"{fn.name}({arg_text})")
    if fn.in_rules:
        check_expression(expr, "test")
        assert expr_from_data(expr_to_data(expr)) == expr
    else:
        with pytest.raises(RuleError, match="not admitted in optimizer rules"):
            check_expression(expr, "test")


# ------------------------------------------------------------------ torch and JAX data
def _backend_text(template, syms, fn):
    return _Args().format(template, *[s.name if isinstance(s, sp.Symbol) else repr(float(s))
                                      for s in fn.full_args(syms)])


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_template_and_autograd_agree(name):
    torch = pytest.importorskip("torch")
    fn = BY_NAME[name]
    syms = _symbols(name)
    code = compile(_backend_text(fn.torch, syms, fn), "<torch template>", "eval")
    for point, _ in _all_points(name):
        xs = {s.name: torch.tensor(v, dtype=torch.float64, requires_grad=True) for s, v in zip(syms, point)}
        out = eval(code, {"torch": torch}, dict(xs))  # noqa: S307 - the registry's own template
        ref_value, ref_grad = _mp_reference(name, point)
        assert _close(out.item(), ref_value, TOL["float64"]["value"]), (name, point, out)
        if name in TORCH_NO_GRAD:
            continue
        grads = torch.autograd.grad(out, list(xs.values()), allow_unused=True)
        got = [0.0 if g is None else g.item() for g in grads]
        for g, r in zip(got, ref_grad):
            assert _close(g, r, TOL["float64"]["grad"]), (name, point, got, ref_grad)


@pytest.mark.parametrize("name", ["Max", "Min"])
def test_max_min_ties_split_like_torch(name):
    """Three arguments, two or three tied: each tied argument gets 1/k (torch.amax/amin)."""
    torch = pytest.importorskip("torch")
    z = sp.Symbol("z")
    f = symopt.gradient(BY_NAME[name].sympy(X, Y, z), (X, Y, z))
    reduce = torch.amax if name == "Max" else torch.amin
    for point in [(1.0, 1.0, 1.0), (2.0, 2.0, -1.0), (-1.0, 2.0, 2.0), (0.5, -3.0, 4.0)]:
        t = torch.tensor(point, dtype=torch.float64, requires_grad=True)
        reduce(t).backward()
        value, grad = f(np.array(point))
        assert value == (max if name == "Max" else min)(point)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=0, atol=1e-15)


def test_jax_templates_match_mpmath_in_float32():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    special = pytest.importorskip("jax.scipy.special")  # the erf template reads special.erf (from jax.scipy)

    for fn in REGISTRY:
        syms = _symbols(fn.name)
        code = compile(_backend_text(fn.jax, syms, fn), "<jax template>", "eval")
        for point, _ in _all_points(fn.name):
            xs = {s.name: jnp.float32(v) for s, v in zip(syms, point)}
            out = float(eval(code, {"jnp": jnp, "jax": jax, "special": special}, xs))  # noqa: S307 - the registry's own template
            ref = _mp_reference(fn.name, point)[0]
            assert _close(out, ref, TOL["float32"]["value"]), (fn.name, point, out, ref)


def test_gradient_message_lists_the_registry():
    with pytest.raises(TypeError) as err:
        symopt.gradient(sp.acos(X), [X])
    listed = str(err.value).split("supported: ")[1]
    assert listed == "+, -, *, /, ** and " + ", ".join(fn.name for fn in REGISTRY)


# ------------------------------------------------------------------ in optimizer rules
def test_tan_log1p_expm1_in_a_user_rule_from_text():
    """A rule written as text with the functions last admitted to rules runs as a kernel equal to
    NumPy's formula (float64: 4 ulp, float32: 2e-6 relative) and passes the 50-digit mpmath check."""
    from symopt import Family, Hyper, Rule
    from symopt.verify.check import verify_variant

    p, g = sp.symbols("theta g", real=True)
    lr = sp.Symbol("lr", positive=True)
    update = parse_expression("theta - lr*(tan(g/4) + log1p(abs(g)) + expm1(g/8))", {"theta": p, "g": g, "lr": lr})
    rule = Rule("test.tan_log1p_expm1", param=p, grad=g, hyper={lr: Hyper(0.01, low=0, key="lr")},
                updates=[(p, update)])
    rng = np.random.default_rng(3)
    for dtype, tol in ((np.float64, 4 * 2.0**-52), (np.float32, 2e-6)):
        theta, grad = rng.normal(size=257).astype(dtype), (3 * rng.normal(size=257)).astype(dtype)
        opt = symopt.optimizer(rule, [theta.copy()], lr=0.01)
        opt.step([grad])
        x, gg = theta.astype(np.float64), grad.astype(np.float64)
        ref = x - 0.01 * (np.tan(gg / 4) + np.log1p(np.abs(gg)) + np.expm1(gg / 8))
        assert opt.params[0].dtype == dtype
        assert rel_err(opt.params[0], ref, floor=1.0) <= tol
        result = verify_variant(Family.of(rule), rule, np.dtype(dtype).name)
        assert result.max_error <= result.tolerance, result
