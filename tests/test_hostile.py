"""Hostile names and expressions: nothing runs that was not meant to, and modules still work.

The corpus (:func:`hostile_names`) holds names with ``\"\"\"``, quotes, newlines, CR, form
feed, backslashes, NUL-like escapes, non-ASCII and compatibility characters (full-width
``ｎｐ`` normalizes to ``np``), bidi overrides, zero-width characters, a 10 000-character
name, keywords and soft keywords, builtins, ``__import__('os').system('touch CANARY')``
and friends, Jinja syntax, LaTeX specials, names that collapse to the same identifier
(``a b``, ``a-b``, ``a.b``, ``á b``), and every name the generated modules use
themselves: all identifiers found in the checked-in ``generated/*.py``, the sanitizer's
:data:`RESERVED` set and every identifier in the templates' code.

* The sanitizer never returns an unsafe or colliding identifier, and its text escapers
  round-trip every entry exactly (docstrings, comments, literals).
* Every corpus entry is used in every text role of a user rule -- rule name, hyperparameter
  symbol, keyword and doc, state symbol, ``state_dict`` key and doc, rule doc, source,
  reference, LaTeX name -- and the module is generated, audited and executed: its
  ``FAMILY`` data reads back the exact strings, and its per-step scalar and state-init
  functions compute the right values.
* Two rules whose state variables and hyperparameters carry the most dangerous names
  (the kernel's own locals and arguments, modules, builtins, duplicates after
  sanitization) run through numba and equal a NumPy reference step for step.
* Hostile *expressions* (printer-hijacking SymPy subclasses, string expressions,
  non-finite or huge constants, unprintable functions, non-elementwise objects, string
  variant conditions, ``str``/``float`` subclasses with a malicious ``__repr__``) are
  refused with a message naming the problem, or are harmless.

A canary file path is embedded in every injection attempt; it must never appear.
"""
import ast
import keyword
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symopt
import symopt.generated
from symopt import Hyper, RuleError, State
from symopt.codegen.audit import audit_module
from symopt.codegen.names import (MAX_IDENTIFIER, RESERVED, comment_text, docstring_text, identifier,
                                  is_reserved, module_name, python_literal, string_literal, template_names)
from symopt.rulebook.rule import Family
from symopt.user_modules import load_rule

CANARY_DIR = Path(tempfile.mkdtemp(prefix="symopt-canary-"))
CANARY = CANARY_DIR / "CANARY"
GENERATED = Path(symopt.generated.__path__[0])


def hostile_names(canary: Path = CANARY) -> list:
    c = str(canary)
    return [
        f"__import__('os').system('touch {c}')", f'__import__("os").system("touch {c}")',
        f'"""; open("{c}", "w").write("x"); """', f"'''; open('{c}', 'w'); '''",
        f"x\nimport os\nos.system('touch {c}')\n", f"x\r\nopen('{c}','w')#", f"\\\"\"\"\nopen('{c}','w')\n\"\"\"",
        f"}}}}{{{{ open('{c}','w') }}}}{{% raw %}}", "{{ ''.__class__.__mro__ }}", "{# comment", "{% if 1 %}",
        f"#\nopen('{c}','w')", f"\u2028open('{c}','w')", f"\x0copen('{c}','w')", f"\u202eopen('{c}','w')\u202c",
        "\u2066x\u2069", "\u200bzero width", "\ufeffbom", '"""', "'''", '"', "'", "\\", "\\\\", "\\n", "\\x00",
        "\\u202e", "\n", "\r", "\t", " ", "\x1b[31mred", "\x7f", "\x85", "ünïcödé", "λ", "β1", "变量", "𝔸𝔹",
        "ﬁ", "ｎｐ", "ｎｕｍｂａ", "Ⅻ", "٣", "x" * 10000, "y" * 9999 + '"""', "a" * (MAX_IDENTIFIER + 1),
        "a" * MAX_IDENTIFIER, "lambda", "class", "def", "None", "True", "False", "import", "match", "case", "type",
        "_", "__", "print", "eval", "exec", "open", "compile", "getattr", "globals", "__import__",
        "__builtins__", "__name__", "__file__", "__class__", "os", "sys", "np.float64", "numba.njit",
        "math.sqrt", "0", "1e5", "-1", "-", ".", "a b", "a-b", "a_b", "a.b", "a\nb", "á b", "a__b", "_a_b_",
        "# comment", "#", "x^2", "x_{1}", "\\frac{", "{", "}", "$", "%", "^", "~",
    ]


def module_identifiers() -> list:
    """Every identifier of the checked-in modules, the reserved set and the templates' code."""
    found = set(RESERVED) | set(template_names())
    for path in sorted(GENERATED.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name):
                found.add(node.id)
            elif isinstance(node, ast.arg):
                found.add(node.arg)
            elif isinstance(node, ast.FunctionDef):
                found.add(node.name)
    return sorted(found)


CORPUS = hostile_names()
OWN_NAMES = module_identifiers()


def _no_canary():
    assert not CANARY.exists(), "hostile input ran code: the canary file exists"


# ----------------------------------------------------------------------------- the sanitizer
def test_sanitizer_returns_safe_unique_identifiers_for_every_name():
    names = CORPUS + OWN_NAMES + [n.upper() for n in OWN_NAMES]
    for suffixes in ((), ("_i", "_c")):
        taken: set = set()
        seen = []
        for text in names:
            ident = identifier(text, taken, prefix="v", suffixes=suffixes)
            assert ident.isidentifier() and ident.isascii(), (text, ident)
            assert not keyword.iskeyword(ident) and not keyword.issoftkeyword(ident), (text, ident)
            assert not is_reserved(ident), (text, ident)
            for s in suffixes:
                assert not is_reserved(ident + s), (text, ident + s)
            assert len(ident) <= MAX_IDENTIFIER + 6
            seen.append(ident)
        assert len(set(seen)) == len(seen), "two names got the same identifier"
        forms = [x for i in seen for x in (i, *(i + s for s in suffixes))]
        assert len(set(forms)) == len(forms), "a name collides with another's suffixed form"
    for text in CORPUS + OWN_NAMES:
        m = module_name(text)
        assert m.isidentifier() and m.isascii() and m == m.lower() and not keyword.iskeyword(m)


def test_text_escapers_round_trip_every_entry():
    for text in CORPUS:
        doc = docstring_text(text)
        tree = ast.parse(f'"""{doc}\n"""\nx = 1\n')
        assert ast.get_docstring(tree, clean=False) == text + "\n"
        assert [type(n).__name__ for n in tree.body] == ["Expr", "Assign"]
        for where in (f"# {comment_text(text)}\nx = 1\n", f'"""{comment_text(text)}"""\nx = 1\n'):
            tree = ast.parse(where)
            assert len(tree.body) == (1 if where.startswith("#") else 2)
            assert "\n" not in comment_text(text) and comment_text(text).isascii()
        assert ast.literal_eval(string_literal(text)) == text
    data = {"names": CORPUS, "nested": [{"k": CORPUS[0], "v": (1.5, True, None, -3)}]}
    assert ast.literal_eval(python_literal(data)) == data


# ------------------------------------------------------------- every name in every text role
def _role_name(text: str) -> str:
    """The text itself, unless blank (a rule/key must not be blank): then wrapped."""
    return text if text.strip() else f"[{text}]"


def _chunks(items, k):
    return [items[i:i + k] for i in range(0, len(items), k)]


def _text_role_rule(chunk, state_chunk, tag):
    p, g = sp.Symbol("p"), sp.Symbol("g")
    hypers, weights = {}, []
    for k, text in enumerate(chunk):
        sym = sp.Symbol(_role_name(text))
        hypers[sym] = Hyper(0.25 + 0.125 * k, low=0.0, high=10.0, key=_role_name(text), doc=text)
        weights.append((sym, k + 1))
    states = {}
    for k, text in enumerate(state_chunk):
        sym = sp.Symbol(_role_name(text) + ("" if _role_name(text) not in map(_role_name, chunk) else "\u2032"))
        states[sym] = State(init=weights[k % len(weights)][0] * 2, key=_role_name(text), doc=text)
    scal = sum(w * h for h, w in weights) + sp.sqrt(weights[0][0])  # hoisted into the scalar function
    updates = [(s, s + g) for s in states]
    updates.append((p, p - scal * g - sum(states) * sp.Rational(1, 1000)))
    name = f"{_role_name(chunk[0])}{tag}"
    rule = symopt.Rule(name, param=p, grad=g, state=states, hyper=hypers, updates=updates,
                       doc=chunk[-1], source=chunk[0], references=list(chunk),
                       latex_names={s.name: chunk[-1] for s in hypers})
    expected_scal = sum(w * (0.25 + 0.125 * k) for k, (h, w) in enumerate(weights)) + np.sqrt(0.25)
    return rule, expected_scal


@pytest.mark.parametrize("start", range(0, len(CORPUS), 24))
def test_every_name_in_every_text_role(start):
    batch = (CORPUS + CORPUS[:8])[start:start + 24]
    for i, chunk in enumerate(_chunks(batch, 8)):
        if len(chunk) < 2:
            continue
        state_chunk = chunk[1:] + chunk[:1]
        rule, expected_scal = _text_role_rule(chunk, state_chunk, f" #{start + i} {time.time_ns()}")
        mod = load_rule(rule)
        fam = mod.FAMILY
        assert fam["name"] == rule.name and fam["doc"] == rule.doc and fam["source"] == rule.source
        assert fam["references"] == list(rule.references)
        assert [h["key"] for h in fam["hyper"]] == [h.key for h in rule.hyper.values()]
        assert [h["doc"] for h in fam["hyper"]] == [h.doc for h in rule.hyper.values()]
        variant = fam["variants"][0]
        assert [s["key"] for s in variant["state"]] == [s.key for s in rule.state.values()]
        by_name = {h["name"]: h["default"] for h in fam["hyper"]}
        scalars = getattr(mod, f"{variant['prefix']}_scalars")(1, *[by_name[n] for n in variant["hyper"]])
        assert any(abs(s + expected_scal) < 1e-12 for s in scalars), (scalars, expected_scal)
        inits = getattr(mod, f"{variant['prefix']}_state_init")(*[by_name[n] for n in variant["init_hyper"]])
        defaults = {sym: h.default for sym, h in rule.hyper.items()}
        assert list(inits) == [float(sp.sympify(s.init).xreplace(defaults)) for s in rule.state.values()]
        audit_module(Path(mod.__file__).read_text(encoding="utf-8"))
    _no_canary()


def test_hostile_family_metadata_and_constraint_messages_round_trip():
    p, g, lr, flag = sp.symbols("p g lr flag")
    for k, text in enumerate(CORPUS[:42:3]):  # injections, quotes, newlines, bidi, non-ASCII
        rule = symopt.Rule(f"variant {k}", param=p, grad=g, hyper={lr: 0.1}, updates=[(p, p - lr * g)])
        other = symopt.Rule(f"variant {k} other", param=p, grad=g, hyper={lr: 0.1}, updates=[(p, p + lr * g)])
        fam = Family(_role_name(text) + f" family {time.time_ns()}", [(sp.Eq(flag, 1), other), (sp.true, rule)],
                     options={flag: False}, constraints=[(lr < 5, text)], doc=text, source=text,
                     references=(text,), group=text)
        mod = load_rule(fam)
        assert mod.constraints({"lr": 9.0, "flag": False}) == [text]
        assert mod.FAMILY["doc"] == text and mod.FAMILY["group"] == text
        x = np.ones(2)
        with pytest.raises(ValueError) as info:
            symopt.optimizer(fam, [x], lr=9.0)
        assert text[:50] in str(info.value) or text.strip() == ""
        assert np.all(x == 1)
    _no_canary()


# ------------------------------------------------------------------- kernels with hostile names
#: State names for the numba run (each state costs compile time): the kernel's own locals and
#: arguments, a module, a builtin, names that collapse to one identifier, an injection, 10 000 chars.
KERNEL_STATES = ["x", "row", "work", "lo", "np", "param_c", "grad_i", "range", "a b", "a.b", "ｎｐ",
                 f"__import__('os').system('touch {CANARY}')", "x" * 10000]


def _kernel_rule(state_names, hyper_names, tag):
    p, g, lr = sp.Symbol("p"), sp.Symbol("g"), sp.Symbol("learning rate")
    states = [sp.Symbol(n) for n in state_names]
    decays = [sp.Symbol(n) for n in hyper_names[:len(states)]]
    weights = [sp.Symbol(f"{n}\u2033") for n in hyper_names[:len(states)]]
    hyper = {lr: Hyper(0.1, low=0.0, key='"""lr\n')}
    for k, (a, b) in enumerate(zip(decays, weights)):
        hyper[a] = Hyper(0.5 + 0.4 * k / len(states), low=0.0, high=1.0, key=f"{a.name} decay", doc=a.name)
        hyper[b] = Hyper(1.0 + k, key=f"{b.name}", doc=b.name)
    state = {s: State(0, key=f"{s.name}") for s in states}
    acc = sp.Symbol("accumulated")
    updates = [(s, a * s + g) for s, a in zip(states, decays)]
    updates += [(acc, sum(b * s for b, s in zip(weights, states))), (p, p - lr * acc)]
    rule = symopt.Rule(f"hostile kernel {tag}", param=p, grad=g, state=state, hyper=hyper, updates=updates)
    return rule, [hyper[a].default for a in decays], [hyper[b].default for b in weights]


def test_hostile_state_and_hyper_names_compute_like_numpy(rng):
    names = KERNEL_STATES
    hyper_pool = [n for n in CORPUS + OWN_NAMES if n.strip() and n not in names]
    rule, decays, weights = _kernel_rule(names, hyper_pool[:len(names)], f"{time.time_ns()}")
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    ref = [q.copy() for q in params]
    new_lr = 0.05
    opt = symopt.optimizer(rule, params, **{'"""lr\n': new_lr})
    ms = [[np.zeros_like(q) for _ in names] for q in ref]
    for _ in range(3):
        grads = [rng.standard_normal(q.shape) for q in ref]
        opt.step(grads)
        for q, g, m in zip(ref, grads, ms):
            for k in range(len(names)):
                m[k] = decays[k] * m[k] + g
            q -= new_lr * sum(weights[k] * m[k] for k in range(len(names)))
    for a, b in zip(params, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    state = opt.state[0]
    for k, name in enumerate(names):
        assert name in state, f"state_dict key {name!r} missing"
        np.testing.assert_allclose(state[name], ms[0][k], rtol=1e-12)
    _no_canary()


# ------------------------------------------------------------------------ hostile expressions
class _EvilAbs(sp.Abs):
    def _pythoncode(self, printer):
        return f"__import__('os').system('touch {CANARY}')"

    _numpycode = _latex = _sympystr = _pythoncode


class _EvilSymbol(sp.Symbol):
    def _pythoncode(self, printer):
        return f"__import__('os').system('touch {CANARY}')"


class _EvilFloat(sp.Float):
    def _pythoncode(self, printer):
        return f"__import__('os').system('touch {CANARY}')"


class _EvilStr(str):
    def __repr__(self):
        return f"__import__('os').system('touch {CANARY}')"

    def __str__(self):
        return self


class _EvilFloatValue(float):
    def __repr__(self):
        return f"__import__('os').system('touch {CANARY}')"


def _rule(**kw):
    p, g, lr = sp.symbols("p g lr")
    args = dict(param=p, grad=g, hyper={lr: 0.1}, updates=[(p, p - lr * g)])
    args.update(kw)
    return symopt.Rule(kw.pop("name", "probe"), **{k: v for k, v in args.items() if k != "name"})


P, G, LR, M = sp.symbols("p g lr m")
INJECT = f"__import__('os').system('touch {CANARY}')"
REFUSED = [
    ("printer-hijacking Abs subclass", lambda: _rule(updates=[(P, P - LR * _EvilAbs(G))]),
     "subclasses a SymPy class"),
    ("printer-hijacking Symbol subclass", lambda: _rule(updates=[(P, P - LR * _EvilSymbol("q") * G)]),
     "only plain sympy Symbols"),
    ("printer-hijacking Float subclass", lambda: _rule(updates=[(P, sp.Add(P, _EvilFloat(0.5), evaluate=False))]),
     "subclasses a SymPy class"),
    ("undefined function named like code", lambda: _rule(updates=[(P, P - sp.Function(INJECT)(G))]),
     "cannot be printed into a kernel"),
    ("unprintable function gamma", lambda: _rule(updates=[(P, P - LR * sp.gamma(G))]), "gamma cannot be printed"),
    ("string expression", lambda: _rule(updates=[(P, INJECT)]), "must be a sympy expression"),
    ("string state init", lambda: _rule(state={M: INJECT}, updates=[(M, M + G), (P, P - M)]),
     "initial value must be a number"),
    ("state without init", lambda: _rule(state={M: None}, updates=[(M, M + G), (P, P - M)]), "no initial value"),
    ("float beyond float64", lambda: _rule(updates=[(P, P - sp.Float("1e400") * G)]), "not a finite float64"),
    ("integer beyond float64", lambda: _rule(updates=[(P, P - sp.Integer(10) ** 400 * G)]),
     "not a finite float64"),
    ("complex infinity", lambda: _rule(updates=[(P, P - G / sp.Integer(0))]), "non-finite constant"),
    ("imaginary unit", lambda: _rule(updates=[(P, P - sp.I * G)]), "ImaginaryUnit cannot be printed"),
    ("EulerGamma constant", lambda: _rule(updates=[(P, P - sp.EulerGamma * G)]), "EulerGamma cannot be printed"),
    ("deep nesting", lambda: _rule(updates=[(P, _deep(G, 200))]), "nested more than"),
    ("matrix update", lambda: _rule(updates=[(P, P - LR * sp.MatrixSymbol("A", 2, 2)[0, 0] * G)]),
     "not elementwise"),
    ("indexed update", lambda: _rule(updates=[(P, P - LR * sp.IndexedBase("A")[sp.Idx("i")] * G)]),
     "not elementwise"),
    ("sum over an index", lambda: _rule(updates=[(P, P - sp.Sum(G, (sp.Symbol("k"), 1, 3)))]), "not elementwise"),
    ("derivative", lambda: _rule(updates=[(P, P - sp.Derivative(sp.Function("f")(G), G))]), "not elementwise"),
    ("no param update", lambda: _rule(updates=[(M, G)]), "never updates the param"),
    ("unknown symbol", lambda: _rule(updates=[(P, P - sp.Symbol("typo") * G)]), "unknown symbols ['typo']"),
    ("string variant condition", lambda: Family("f", [(INJECT, _rule())]), "must be a SymPy boolean"),
    ("constraint over an array", lambda: _family_with(constraints=[(P > 0, "p positive")]),
     "not hyperparameters or options"),
    ("surrogate in a name", lambda: _rule(name="bad\ud800name"), "not valid Unicode text"),
    ("NaN bound", lambda: _rule(hyper={LR: Hyper(0.1, low=float("nan"))}), "low bound must be a number"),
    ("default outside range", lambda: _rule(hyper={LR: Hyper(2.0, high=1.0)}), "outside its range"),
    ("state key 'step'", lambda: _rule(state={M: State(0, key="step")}, updates=[(M, M + G), (P, P - M)]),
     "reserved"),
    ("hyper key 'params'", lambda: _rule(hyper={LR: Hyper(0.1, key="params")}), "reserved"),
    ("two hypers one keyword", lambda: _rule(hyper={LR: 0.1, M: Hyper(0.2, key="lr")},
                                             updates=[(P, P - LR * M * G)]), "share the keyword 'lr'"),
    ("symbol named t", lambda: _rule(hyper={sp.Symbol("t"): 0.1}, updates=[(P, P - sp.Symbol("t") * G)]),
     "reserved for the step counter"),
]


def _deep(x, depth):
    for k in range(depth):
        x = (x + k + 1) * G  # Mul(G, Add(k + 1, Mul(G, ...))): two levels per step
    return P - x


def _family_with(**kw):
    fam = Family("f", [(sp.true, _rule())], **kw)
    from symopt.rulebook.rule import check_family

    check_family(fam)
    return fam


@pytest.mark.parametrize("case,make,match", REFUSED, ids=[c[0] for c in REFUSED])
def test_hostile_expressions_are_refused_with_a_clear_message(case, make, match):
    with pytest.raises((RuleError, TypeError, ValueError), match=match.replace("[", r"\[").replace("]", r"\]")):
        fam = make()
        load_rule(fam)
    _no_canary()


def test_str_and_float_subclasses_with_malicious_repr_are_harmless(rng):
    p, g, lr = sp.symbols("p g lr")
    name = _EvilStr(f"evil repr {time.time_ns()}")
    rule = symopt.Rule(name, param=p, grad=g, hyper={lr: Hyper(_EvilFloatValue(0.25), key=_EvilStr("lr"),
                                                                doc=_EvilStr("doc"))},
                       updates=[(p, p - lr * g)], doc=_EvilStr("doc"), references=[_EvilStr("ref")])
    x = np.ones(3)
    opt = symopt.optimizer(rule, [x])
    opt.step([np.full(3, 2.0)])
    np.testing.assert_allclose(x, 0.5)
    text = Path(opt.module.__file__).read_text(encoding="utf-8")
    audit_module(text)
    tree = ast.parse(text)
    for node in ast.walk(tree):  # the malicious repr may only appear as text inside docstrings
        if isinstance(node, (ast.Module, ast.FunctionDef)) and ast.get_docstring(node, clean=False):
            node.body = node.body[1:]
    assert "__import__" not in ast.unparse(tree)
    assert opt.module.FAMILY["hyper"][0]["default"] == 0.25
    assert type(opt.module.FAMILY["name"]) is str and opt.module.FAMILY["name"] == name
    _no_canary()


def _mutations(text: str, canary: Path) -> dict:
    """What a sanitizer bug could turn a checked-in module into."""
    inject = f"open({str(canary)!r}, 'w')"
    return {
        "state buffer named like the kernel local x": text.replace("exp_avg", "x"),
        "state buffer named like the kernel local lo": text.replace("exp_avg", "lo"),
        "hyperparameter named np": text.replace("beta1", "np"),
        "docstring broken out of": text.replace('"""', f'"""\n{inject}\n"""', 2),
        "comment broken out of": text.replace("# source rule:", f"# source rule:\n{inject}\n#", 1),
        "dunder call": text.replace("nbad = 0", "nbad = __import__('os')", 1),
        "builtin open": text.replace("nbad = 0", f"nbad = {inject}", 1),
        "non-literal FAMILY": text.replace("FAMILY = {", f"FAMILY = {inject} or {{", 1),
    }


def test_audit_catches_what_a_sanitizer_bug_would_produce():
    text = (GENERATED / "adam.py").read_text(encoding="utf-8")
    audit_module(text)
    for label, bad in _mutations(text, CANARY).items():
        assert bad != text, label
        with pytest.raises(RuleError):
            audit_module(bad)
    _no_canary()


def test_every_checked_in_module_passes_the_audit_and_module_names_are_unique():
    for path in sorted(GENERATED.glob("*.py")):
        if path.name == "__init__.py" or "FAMILY = " in path.read_text(encoding="utf-8"):
            audit_module(path.read_text(encoding="utf-8"), str(path))
    mods = [module_name(n) for n in symopt.rules()]
    assert len(set(mods)) == len(mods)


FORMULA_ATTACKS = [
    f"__import__('os').system('touch {CANARY}')", f"open({str(CANARY)!r}, 'w')", "g.__class__.__mro__",
    "().__class__", "[c for c in ()]", "lambda: 0", "g[0]", "eval('1')", "exec(g)", "getattr(g, 'x')",
    "exp(g, base=2)", "exp(*g)", "'text'", "b'bytes'", "1j * g", "g ^ 2", "g @ g", "9**9**9**9", "(" * 500 + "g" + ")" * 500,
    "g; import os", "import os", "f(g)", "__builtins__", "g if t else", "",
]


@pytest.mark.parametrize("text", FORMULA_ATTACKS, ids=[f"attack{k}" for k in range(len(FORMULA_ATTACKS))])
def test_formula_text_is_parsed_without_eval(text):
    import symopt.schedule

    with pytest.raises((RuleError, TypeError)):
        symopt.parse_expression(text)
    with pytest.raises((RuleError, TypeError)):
        symopt.schedule.expr(text)
    _no_canary()


def test_formula_text_builds_a_working_rule(rng):
    p, g, m = sp.symbols("p g m")
    lr, beta = sp.symbols("lr beta")
    syms = [p, g, m, lr, beta]
    rule = symopt.Rule(f"parsed heavy ball {time.time_ns()}", param=p, grad=g, state={m: 0},
                       hyper={lr: 0.1, beta: 0.9},
                       updates=[(m, symopt.parse_expression("beta*m + (1 - beta)*g", syms)),
                                (p, symopt.parse_expression("p - lr*m/(1 + abs(m)) if t > 1 else p - lr*g", syms))])
    x = rng.standard_normal(6)
    ref, mom = x.copy(), np.zeros(6)
    opt = symopt.optimizer(rule, [x])
    for t in (1, 2, 3):
        grad = rng.standard_normal(6)
        opt.step([grad])
        mom = 0.9 * mom + 0.1 * grad
        ref = ref - 0.1 * mom / (1 + np.abs(mom)) if t > 1 else ref - 0.1 * grad
    np.testing.assert_allclose(x, ref, rtol=1e-13)
    with pytest.raises(RuleError, match="unknown name 'q'"):
        symopt.parse_expression("q + g", syms)
    assert symopt.schedule.expr("1e-3*cos(pi*t/100)")(50) == pytest.approx(1e-3 * np.cos(np.pi / 2), abs=1e-18)


def test_no_canary_at_the_end():
    _no_canary()
    assert not any(CANARY_DIR.iterdir())
    assert not os.path.exists("CANARY")
