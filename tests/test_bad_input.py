"""Bad input, table-driven over every built-in rule: each case raises ``ValueError``/``TypeError``
with a message naming the problem, and modifies nothing.

For every rule in ``symopt.rules()`` (new rules are covered automatically) the table
is built from the rule's own keyword metadata (``FAMILY["hyper"]`` of its generated
module): for every float hyperparameter NaN, ±inf, a string, ``None``, a value just
outside each finite bound (the bound itself when it is open); for every bool
hyperparameter a float and a string; for every tuple keyword (``betas``) a tuple of
the wrong length and a bare number.  Then the same cases for every rule: params of
the wrong dtype (int, float16, complex), non-contiguous and Fortran-ordered, read-only,
empty, a bare array, Python lists, mixed dtypes, one array twice, an unknown keyword,
a bad ``on_nonfinite``, malformed param groups; at ``step``: the wrong number of grads,
a wrong shape/dtype, non-contiguous, a bare array, a Python list, a NaN or inf anywhere,
a hyperparameter made invalid in ``param_groups``, a param made read-only; at
``load_state_dict``: a dict from another rule, another shape, missing keys.

"Modifies nothing": params (compared as bytes), every state buffer and every step
count are identical before and after the failing call.

Malformed *rules* (no update of the param, unknown symbols, state without an initial
value, non-elementwise updates, unprintable functions, ...) are rejected when the Rule
is built, with a message naming the problem.
"""
import math

import numpy as np
import pytest
import sympy as sp

import symopt
from symopt import Hyper, RuleError, State
from symopt.runtime.kernels import load_builtin
from rule_db import ELEMENTWISE

RULES = ELEMENTWISE  # every built-in rule that steps 1-D params (matrix rules: test_matrix.py)
MATCHES = {"finite": "must be finite", "number": "must be a real number", "bool": "must be True or False",
           "range": "invalid", "tuple": "must be a tuple of"}


def _hyper_cases(name):
    """(label, kwargs, exception types, message fragment) for every keyword of ``name``."""
    fam = load_builtin(name).FAMILY
    defaults = symopt.optimizer(name, [np.zeros(2)]).defaults
    cases = []
    for h in fam["hyper"]:
        key, index = h["key"], h["index"]
        label = key if index is None else f"{key}[{index}]"

        def put(value, key=key, index=index):
            if index is None:
                return {key: value}
            base = list(defaults[key])
            base[index] = value
            return {key: tuple(base)}

        if h["kind"] == "bool":
            cases += [(f"{label}=0.5", put(0.5), TypeError, f"'{label}' must be True or False"),
                      (f"{label}='yes'", put("yes"), TypeError, f"'{label}' must be True or False")]
            continue
        cases += [(f"{label}=nan", put(math.nan), ValueError, f"'{label}' must be finite"),
                  (f"{label}=inf", put(math.inf), ValueError, f"'{label}' must be finite"),
                  (f"{label}=-inf", put(-math.inf), ValueError, f"'{label}' must be finite"),
                  (f"{label}='0.1'", put("0.1"), TypeError, f"'{label}' must be a real number"),
                  (f"{label}=None", put(None), TypeError, f"'{label}' must be a real number")]
        lo, hi = h["low"], h["high"]
        if lo is not None:
            bad = lo if h["low_open"] else lo - max(1.0, abs(lo))
            cases.append((f"{label}={bad!r} (below)", put(bad), ValueError, f"invalid '{label}'"))
        if hi is not None:
            bad = hi if h["high_open"] else hi + max(1.0, abs(hi))
            cases.append((f"{label}={bad!r} (above)", put(bad), ValueError, f"invalid '{label}'"))
    for key, value in defaults.items():
        if isinstance(value, tuple):
            cases += [(f"{key} too long", {key: tuple(value) + (0.5,)}, ValueError, f"'{key}' must be a tuple of"),
                      (f"{key} bare number", {key: 0.5}, ValueError, f"'{key}' must be a tuple of")]
    return cases


def _params(dtype=np.float64):
    rng = np.random.default_rng(7)
    return [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(5).astype(dtype)]


def _readonly():
    a = np.zeros(3)
    a.flags.writeable = False
    return [a]


CONSTRUCTION = [
    ("int params", lambda: [np.zeros(3, np.int64)], {}, TypeError, "params must be float32 or float64"),
    ("float16 params", lambda: [np.zeros(3, np.float16)], {}, TypeError, "params must be float32 or float64"),
    ("complex params", lambda: [np.zeros(3, np.complex128)], {}, TypeError, "params must be float32 or float64"),
    ("strided params", lambda: [np.zeros((4, 4))[:, ::2]], {}, ValueError, "not C-contiguous"),
    ("Fortran-ordered params", lambda: [np.asfortranarray(np.zeros((3, 4)))], {}, ValueError, "not C-contiguous"),
    ("read-only params", _readonly, {}, ValueError, "read-only"),
    ("empty list", lambda: [], {}, ValueError, "empty parameter list"),
    ("bare array", lambda: np.zeros(3), {}, TypeError, "not a single array"),
    ("list of lists", lambda: [[0.0, 1.0]], {}, TypeError, "must be a numpy.ndarray"),
    ("mixed dtypes", lambda: [np.zeros(3), np.zeros(3, np.float32)], {}, TypeError, "share one dtype"),
    ("one array twice", lambda: [np.zeros(3)] * 2, {}, ValueError, "share memory"),
    ("overlapping views", lambda: (lambda a: [a[:3], a[2:]])(np.zeros(5)), {}, ValueError, "share memory"),
    ("unknown keyword", lambda: _params(), {"lrr": 0.1}, TypeError, "unknown hyperparameter 'lrr'"),
    ("bad on_nonfinite", lambda: _params(), {"on_nonfinite": "maybe"}, ValueError, "on_nonfinite must be one of"),
    ("group without params", lambda: [{"lr": 0.1}], {}, ValueError, "has no 'params' key"),
    ("group with unknown key", lambda: [{"params": _params(), "lrr": 0.1}], {}, TypeError,
     "unknown hyperparameter 'lrr'"),
    ("groups mixed with arrays", lambda: [{"params": _params()[:1]}, np.zeros(3)], {}, TypeError, "not a mix"),
    ("params not iterable", lambda: 3.0, {}, TypeError, "params must be a list"),
]


def _snapshot(opt):
    return ([p.tobytes() for p in opt.params],
            {j: {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in e.items()}
             for j, e in opt.state.items()},
            opt.skipped_steps)


def _grads(params):
    rng = np.random.default_rng(3)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def _with(grads, j, value):
    out = list(grads)
    out[j] = value
    return out


def _nan_at(grads, j, value):
    g = [x.copy() for x in grads]
    g[j].reshape(-1)[-1] = value
    return g


STEP = [
    ("too few grads", lambda g: g[:1], ValueError, "grads has 1 entries but the optimizer has 2 params"),
    ("too many grads", lambda g: g + g[:1], ValueError, "grads has 3 entries"),
    ("wrong shape", lambda g: _with(g, 1, np.zeros(6)), ValueError, r"grads\[1\] has shape \(6,\), param has \(5,\)"),
    ("transposed", lambda g: _with(g, 0, np.ascontiguousarray(g[0].T)), ValueError, r"grads\[0\] has shape \(4, 3\)"),
    ("float32 grad", lambda g: _with(g, 0, g[0].astype(np.float32)), TypeError, r"grads\[0\] has dtype float32"),
    ("int grad", lambda g: _with(g, 1, np.zeros(5, np.int64)), TypeError, r"grads\[1\] has dtype int64"),
    ("strided grad", lambda g: _with(g, 0, np.zeros((3, 8))[:, ::2]), ValueError, r"grads\[0\] is not C-contiguous"),
    ("bare array", lambda g: g[0], TypeError, "grads must be a list of arrays"),
    ("python list grad", lambda g: _with(g, 1, [0.0] * 5), TypeError, r"grads\[1\] must be a numpy.ndarray"),
    ("NaN in the last grad", lambda g: _nan_at(g, 1, np.nan), ValueError, "NaN or inf; no param or state was modified"),
    ("inf in the first grad", lambda g: _nan_at(g, 0, np.inf), ValueError, "NaN or inf"),
    ("-inf in the first grad", lambda g: _nan_at(g, 0, -np.inf), ValueError, "NaN or inf"),
]


def _run_case(make_call, exc, match):
    """None when ``make_call()`` raises ``exc`` with ``match`` in its message; otherwise a description."""
    try:
        make_call()
    except exc as e:
        import re

        if not re.search(match, str(e)):
            return f"raised {type(e).__name__} without {match!r}: {e}"
        return None
    except Exception as e:  # noqa: BLE001 - reported as a failure below
        return f"raised {type(e).__name__} instead of {exc.__name__}: {e}"
    return "did not raise"


@pytest.mark.parametrize("name", RULES)
def test_bad_values_are_refused_before_anything_changes(name):
    failures = []
    # construction: every keyword's bad values, then generic bad params
    for label, kwargs, exc, match in _hyper_cases(name):
        params = _params()
        before = [p.tobytes() for p in params]
        import re

        problem = _run_case(lambda: symopt.optimizer(name, params, **kwargs), exc, re.escape(match))
        if problem:
            failures.append(f"optimizer({label}): {problem}")
        if [p.tobytes() for p in params] != before:
            failures.append(f"optimizer({label}) modified the params")
    for label, make, kwargs, exc, match in CONSTRUCTION:
        problem = _run_case(lambda: symopt.optimizer(name, make(), **kwargs), exc, match)
        if problem:
            failures.append(f"optimizer: {label}: {problem}")
    # step: bad grads, then bad values set in param_groups, then a param made read-only
    params = _params()
    opt = symopt.optimizer(name, params)
    good = _grads(params)
    opt.step(good)  # state is not all zeros any more
    for label, make, exc, match in STEP:
        before = _snapshot(opt)
        problem = _run_case(lambda: opt.step(make(good)), exc, match)
        if problem:
            failures.append(f"step: {label}: {problem}")
        if _snapshot(opt) != before:
            failures.append(f"step: {label}: modified params, state or step counts")
    for label, kwargs, exc, match in _hyper_cases(name):
        (key, value), = kwargs.items()
        group = opt.param_groups[0]
        saved = group[key]
        group[key] = value
        before = _snapshot(opt)
        import re

        problem = _run_case(lambda: opt.step(good), exc, re.escape(match))
        group[key] = saved
        if problem:
            failures.append(f"step after param_groups[0][{label}]: {problem}")
        if _snapshot(opt) != before:
            failures.append(f"step after param_groups[0][{label}]: modified something")
    before = _snapshot(opt)
    params[0].flags.writeable = False
    problem = _run_case(lambda: opt.step(good), ValueError, r"params\[0\] became read-only")
    params[0].flags.writeable = True
    if problem:
        failures.append(f"step with a read-only param: {problem}")
    if _snapshot(opt) != before:
        failures.append("step with a read-only param modified something")
    opt.step(good)  # and the optimizer still works afterwards
    # load_state_dict: another rule, another shape, missing keys
    other = "notes.sgd" if name != "notes.sgd" else "notes.gd"
    sd_other = symopt.optimizer(other, _params()).state_dict()
    sd_shape = symopt.optimizer(name, [np.zeros((3, 4)), np.zeros(6)]).state_dict()
    sd_missing = opt.state_dict()
    for entry in sd_missing["state"].values():
        for key in [k for k in entry if k != "step"][:1]:
            del entry[key]
    load_cases = [("another rule", sd_other, "is from rule")]
    if any(isinstance(v, np.ndarray) for v in sd_shape["state"][1].values()):
        load_cases.append(("another shape", sd_shape, r"has shape \(6,\), the param has \(5,\)"))
    if any(len(e) > 1 for e in opt.state_dict()["state"].values()):
        load_cases.append(("missing state key", sd_missing, "is missing key"))
    load_cases.append(("not a state dict", {"state": {}}, "must be a dict with 'state' and 'param_groups'"))
    for label, sd, match in load_cases:
        before = _snapshot(opt)
        problem = _run_case(lambda: opt.load_state_dict(sd), ValueError, match)
        if problem:
            failures.append(f"load_state_dict({label}): {problem}")
        if _snapshot(opt) != before:
            failures.append(f"load_state_dict({label}) modified something")
    assert not failures, f"{name}: {len(failures)} problems:\n  " + "\n  ".join(failures)


def test_the_table_covers_every_keyword_of_every_rule():
    total = sum(len(_hyper_cases(n)) for n in RULES) * 2 + len(RULES) * (len(CONSTRUCTION) + len(STEP) + 3)
    print(f"bad-input cases: {total} over {len(RULES)} rules")
    for name in RULES:
        keys = {h["key"] for h in load_builtin(name).FAMILY["hyper"]}
        covered = {label.split("=")[0].split("[")[0].split(" ")[0] for label, *_ in _hyper_cases(name)}
        assert keys <= covered, f"{name}: keywords without bad-value cases: {sorted(keys - covered)}"


# ------------------------------------------------------------------------------ malformed rules
p, g, m, v, lr, beta = sp.symbols("p g m v lr beta")


def _rule(**kw):
    args = dict(param=p, grad=g, hyper={lr: 0.1}, updates=[(p, p - lr * g)])
    args.update(kw)
    return symopt.Rule("malformed", **args)


MALFORMED = [
    ("no update of the param", dict(updates=[(m, g)]), "never updates the param p"),
    ("unknown free symbol", dict(updates=[(p, p - lr * g * sp.Symbol("zeta"))]), r"unknown symbols \['zeta'\]"),
    ("state used before it exists", dict(updates=[(p, p - lr * m)]), r"unknown symbols \['m'\]"),
    ("temporary used before assignment", dict(updates=[(p, p - lr * v), (v, g)]), r"unknown symbols \['v'\]"),
    ("state without an initial value", dict(state={m: None}, updates=[(m, m + g), (p, p - m)]),
     "state variable m has no initial value"),
    ("state init from the gradient", dict(state={m: g}, updates=[(m, m + g), (p, p - m)]),
     "initial value may use only hyperparameters"),
    ("state never updated", dict(state={m: 0}, updates=[(p, p - lr * g * m)]), "state variable m is never updated"),
    ("assigning a hyperparameter", dict(updates=[(lr, lr * 2), (p, p - lr * g)]), "lr is a hyperparameter"),
    ("assigning t", dict(updates=[(symopt.t, 1), (p, p - lr * g)]), "step counter t cannot be assigned"),
    ("matrix update", dict(updates=[(p, p - lr * sp.Matrix([[g]])[0, 0] * sp.MatrixSymbol("A", 1, 1)[0, 0])]),
     "not elementwise"),
    ("indexed update", dict(updates=[(p, p - lr * sp.IndexedBase("G")[sp.Idx("i")])]), "not elementwise"),
    ("sum over an index", dict(updates=[(p, p - lr * sp.Sum(g, (sp.Symbol("k"), 1, 3)))]), "not elementwise"),
    ("integral", dict(updates=[(p, p - sp.Integral(g, g))]), "not elementwise"),
    ("unprintable function", dict(updates=[(p, p - lr * sp.besselj(0, g))]), "besselj cannot be printed"),
    ("undefined function", dict(updates=[(p, p - lr * sp.Function("f")(g))]), "f cannot be printed"),
    ("Piecewise without a default", dict(updates=[(p, sp.Piecewise((p - lr * g, g > 0)))]),
     r"final \(expr, True\) branch"),
    ("non-finite constant", dict(updates=[(p, p - sp.oo * g)]), "non-finite constant"),
    ("param equals grad", dict(grad=p), "param and grad must be different symbols"),
    ("param not a Symbol", dict(param=sp.Integer(1)), "param must be a sympy Symbol"),
    ("updates not pairs", dict(updates=[p]), r"updates must be a sequence of \(symbol, expression\) pairs"),
    ("string right-hand side", dict(updates=[(p, "p - lr*g")]), "right-hand side must be a sympy expression"),
    ("hyper default not a number", dict(hyper={lr: "0.1"}), "default must be a number or Hyper"),
    ("hyper default NaN", dict(hyper={lr: float("nan")}), "must be finite"),
    ("hyper bounds reversed", dict(hyper={lr: Hyper(0.1, low=1.0, high=0.0)}), "low bound 1.0 is above high bound 0.0"),
    ("same name, other assumptions", dict(hyper={lr: 0.1, sp.Symbol("g", positive=True): 0.2}),
     "two different symbols share the name 'g'"),
    ("state and hyper at once", dict(state={lr: 0}, updates=[(lr, lr), (p, p - lr * g)]),
     "declared both as state/param/grad and hyperparameter"),
    ("duplicate state keys", dict(state={m: State(0, key="buf"), v: State(0, key="buf")},
                                  updates=[(m, m + g), (v, v + g), (p, p - m - v)]), "share the state_dict key 'buf'"),
    ("tuple keyword with a gap", dict(hyper={lr: Hyper(0.1, key="betas", index=0), beta: Hyper(0.2, key="betas",
                                                                                            index=2)},
                                      updates=[(p, p - lr * beta * g)]), r"has indices \[0, 2\]"),
]


@pytest.mark.parametrize("case,kw,match", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_rules_are_rejected_at_construction(case, kw, match):
    with pytest.raises((RuleError, TypeError, ValueError), match=match):
        _rule(**kw)


def test_unknown_rule_and_wrong_rule_type():
    with pytest.raises(ValueError, match="unknown rule 'adamm'"):
        symopt.optimizer("adamm", _params())
    with pytest.raises(TypeError, match="expected a rule name"):
        symopt.optimizer(3.0, _params())
