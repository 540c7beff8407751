"""The render stage: plans + printers + Jinja2 templates -> module source text.

One Jinja2 environment (``StrictUndefined``, ``trim_blocks``, ``lstrip_blocks``)
renders every kind of generated module from ``templates/``:

* ``optimizer_module.py.jinja`` -- an optimizer family (:func:`render_family`):
  per-step scalar functions and elementwise kernels per variant, and for rules with
  reductions the read-only reduction passes (macros of ``_reductions.jinja``);
* ``matrix_module.py.jinja`` -- a family of matrix rules (an ``Iterate``; same entry
  point): two element passes per variant around the iteration's BLAS calls
  (:mod:`.plan_matrix`);
* ``elementwise_module.py.jinja`` -- an elementwise loss (``value``,
  ``value_and_grad``) or activation (``forward``, ``backward``) of ``symopt.nn``
  (:func:`render_elementwise`);
* ``rowwise_module.py.jinja`` -- softmax and softmax cross-entropy, with row
  reductions before the element loop (:func:`render_rowwise`);
* ``gradient_module.py.jinja`` -- a user expression's value and gradient for
  :func:`symopt.gradient`, one loop per term shape (:func:`render_gradient`);
* ``generated_index.py.jinja`` -- the ``RULES`` index of ``generated/``
  (:func:`render_index`).

Templates receive printed strings and plain data only; every name is generated here
(element symbols, CSE temporaries ``_e0…``, row temporaries, scalars ``s<k>``) or
passed through :func:`~symopt.codegen.names.identifier`.  Every module begins with
the same banner (:func:`header`) and records its :func:`input hash <input_hash>`:
a sha256 of what it was generated from and of the code generator itself
(:func:`generator_digest`), so a module from another generator is never taken for a
current one.
"""

from __future__ import annotations

import functools
import hashlib
import math
import pprint
from dataclasses import dataclass
from importlib import resources

import jinja2
import sympy as sp

from .._version import __version__
from ..frame_abi import frame_arrays
from ..rulebook.display import expr_latex
from ..rulebook.factored import is_factored_rule, machine_eps, min_dim_to_factor
from ..rulebook.matrix import cols, rows
from ..rulebook.metadata import RuleError, t
from ..rulebook.preconditioned import n_axes
from ..rulebook.rule import Family, Rule
from .names import comment_text, docstring_text, identifier, python_literal, string_literal
from .plan import KernelPlan, make_plan
from .plan_gradients import SCALE, UPSTREAM
from .plan_matrix import RESULT, WORK, is_matrix_rule, make_matrix_plan
from .plan_factored import make_factored_plan
from .plan_preconditioned import is_preconditioned_rule, make_preconditioned_plan
from .printers import JaxArrayPrinter, KernelPrinter, ScalarPrinter, TorchArrayPrinter

OPTIMIZER_TEMPLATE = "optimizer_module.py.jinja"
MATRIX_TEMPLATE = "matrix_module.py.jinja"
FACTORED_TEMPLATE = "factored_module.py.jinja"
PRECONDITIONED_TEMPLATE = "preconditioned_module.py.jinja"
ELEMENTWISE_TEMPLATE = "elementwise_module.py.jinja"
ROWWISE_TEMPLATE = "rowwise_module.py.jinja"
GRADIENT_TEMPLATE = "gradient_module.py.jinja"
INDEX_TEMPLATE = "generated_index.py.jinja"
_DTYPES = (("f32", "float32", 4), ("f64", "float64", 8))
#: Most arguments of an element function marked ``inline="always"`` (CPython's call threshold).
_MAX_INLINE_ARGS = 30
#: Source files whose text makes up the code generator (with every template), package by package.
_GENERATOR_SOURCES = (("symopt.codegen", "*.py"), ("symopt.derive", "*.py"), ("symopt", "files.py"),
                      ("symopt", "functions.py"), ("symopt", "frame_abi.py"),
                      ("symopt.templates", "*.jinja"))


@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of every template (one per process)."""
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _load_template(name: str) -> str:
    return resources.files("symopt.templates").joinpath(name).read_text(encoding="utf-8")


def generator_files() -> list:
    """``(label, file)`` of every installed source file of the code generator: the planners
    (``codegen/plan.py``, ``codegen/plan_gradients.py``) and the derivations they plan
    (``derive/``), printers, render and emit code, the name sanitizer and audit, the file
    writer, the function registry and every template."""
    files = []
    for package, pattern in _GENERATOR_SOURCES:
        for entry in sorted(resources.files(package).iterdir(), key=lambda e: e.name):
            if entry.is_file() and (entry.name.endswith(pattern[1:]) if pattern.startswith("*")
                                    else entry.name == pattern):
                files.append((f"{package}/{entry.name}", entry))
    return files


@functools.cache
def generator_digest() -> str:
    """sha256 over the text of :func:`generator_files`, read once per process: any change to the
    code generator changes every input hash."""
    h = hashlib.sha256()
    for label, entry in generator_files():
        h.update(label.encode() + b"\0")
        h.update(entry.read_bytes() + b"\0")
    return h.hexdigest()


def input_hash(template: str, *parts: str) -> str:
    """sha256 over the template's name, ``parts`` (what the module is generated from), the symopt
    version and :func:`generator_digest`."""
    h = hashlib.sha256()
    for p in (template, *parts, __version__, generator_digest()):
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def header(label: str, source: str, template: str, digest: str) -> dict:
    """The banner and header constants of a generated module (``_util.jinja``'s ``banner``)."""
    return {
        "version": __version__, "rule": comment_text(label), "source": comment_text(source),
        "template": template, "input_hash": digest, "version_literal": string_literal(__version__),
        "input_hash_literal": string_literal(digest), "template_literal": string_literal(template),
    }


def _num(x):
    if isinstance(x, bool):
        return x
    x = float(x)
    return None if math.isinf(x) else x


# ----------------------------------------------------------------------------- optimizer families
def family_hash(family: Family) -> str:
    """The input hash of ``family``'s module: its template, formulas (fingerprint) and the generator."""
    template = (FACTORED_TEMPLATE if is_factored_family(family) else
                PRECONDITIONED_TEMPLATE if is_preconditioned_family(family) else
                MATRIX_TEMPLATE if is_matrix_family(family) else OPTIMIZER_TEMPLATE)
    return input_hash(template, family.fingerprint())


def hyper_identifiers(family: Family) -> dict:
    """Symbol -> identifier for every hyperparameter and option of the family."""
    taken: set = set()
    return {sym: identifier(sym.name, taken, prefix="h") for sym in family.hyper}


def _state_identifiers(rule: Rule) -> dict:
    taken: set = {"param", "grad"}
    # The kernel also uses ``<id>_i`` (element value) and ``<id>_c`` (chunk view): keep those free too.
    return {sym: identifier(rule.state_key(sym), taken, prefix="state", suffixes=("_i", "_c")) for sym in rule.state}


def _family_data(family: Family, plans: list, hyper_ids: dict, prefixes: list) -> dict:
    """The plain-data description of a family that the runtime reads (no SymPy)."""
    hyper = []
    for sym, h in family.hyper.items():
        hyper.append({
            "name": hyper_ids[sym], "key": h.key or sym.name, "index": h.index,
            "default": h.user_default, "kind": h.kind, "low": _num(h.low), "high": _num(h.high),
            "low_open": h.low_open, "high_open": h.high_open, "doc": h.doc,
        })
        if h.kind == "choice":  # users pass the choice, kernels read its position
            hyper[-1]["choices"] = list(h.choices)
    variants = []
    for (when, rule), plan, prefix in zip(family.variants, plans, prefixes):
        state_ids = _state_identifiers(rule)
        variants.append({
            "name": rule.name,
            "prefix": prefix,
            "hyper": [hyper_ids[s] for s in plan.hyper],
            "init_hyper": [hyper_ids[s] for s in _init_hypers(rule)],
            "state": [{"key": rule.state_key(s), "arg": state_ids[s]} for s in plan.state],
            "nscalars": len(plan.scalars),
            "op_count": plan.op_count,
            "formula_hash": rule.fingerprint(),
        })
        if getattr(plan, "reduction", None) is not None:  # reduction passes + per-tensor scalars
            variants[-1]["reduce"] = _reduction_runtime_info(plan, prefix)
    return {
        "name": family.name,
        "group": family.group,
        "source": family.source,
        "doc": family.doc,
        "references": list(family.references),
        "hyper": hyper,
        "variants": variants,
        "formula_hash": family.fingerprint(),
        **({"refused": dict(family.refused)} if family.refused else {}),   # keyword -> how to get it
    }


def _init_hypers(rule: Rule) -> list:
    syms: set = set()
    for spec in rule.state.values():
        init = sp.sympify(spec.init)
        if init != rule.param:
            syms |= init.free_symbols
    return [s for s in rule.hyper if s in syms]


def _resolved(temps) -> dict:
    """``{temporary: its expression with the temporaries before it substituted}`` of ``((sym, expr), ...)``."""
    out: dict = {}
    for sym, expr in temps:
        out[sym] = expr.xreplace(out)
    return out


def _scalar_context(rule: Rule, plan, hyper_ids: dict) -> dict:
    """The per-step scalar function and the state initial values of a variant (either planner's plan)."""
    # Scalar function: arguments t and the hyperparameters, then CSE temporaries.
    scalar_names = {t: "t", **{s: hyper_ids[s] for s in plan.hyper}}
    taken = set(scalar_names.values())
    for sym, _ in plan.scalar_temps:
        scalar_names[sym] = identifier(sym.name, taken, prefix="c")
    sp_printer = ScalarPrinter(scalar_names)
    scalar_temps = [(scalar_names[s], sp_printer.doprint(e)) for s, e in plan.scalar_temps]
    scalar_returns = [sp_printer.doprint(e) for e in plan.scalar_exprs]
    resolved = _resolved(plan.scalar_temps)
    scalar_doc = [docstring_text(f"s{i} = {sp.sstr(e.xreplace(resolved))}") for i, e in enumerate(plan.scalar_exprs)]

    # State initial values.
    init_ids = {s: hyper_ids[s] for s in _init_hypers(rule)}
    init_printer = ScalarPrinter(init_ids)
    state_inits = []
    for s in plan.state:
        init = sp.sympify(rule.state[s].init)
        state_inits.append(string_literal("param") if init == rule.param else init_printer.doprint(sp.Float(0) + init))
    return {
        "nscalars": len(plan.scalars),
        "scalar_args": ["t", *[hyper_ids[s] for s in plan.hyper]],
        "scalar_doc": scalar_doc,
        "scalar_temps": scalar_temps,
        "scalar_returns": scalar_returns,
        "init_args": [init_ids[s] for s in _init_hypers(rule)],
        "state_inits": state_inits,
    }


def _switch_defaults(rule: Rule, plan: KernelPlan) -> list:
    """``(k, value)`` for each per-step scalar ``s<k>`` that is a condition (1 where it holds, else 0) and
    does not depend on the step, with its value at the hyperparameters' defaults.

    The flat kernels run a second copy of the element loop, taken when every such scalar holds that
    value, with the values written as constants: the compiler then drops the branches they decide and
    the arithmetic of the branches not taken (``maximize``, decoupled or coupled weight decay...).
    """
    resolved = _resolved(plan.scalar_temps)
    defaults = {}
    for sym, h in rule.hyper.items():
        if h.kind in ("float", "bool") and isinstance(h.default, (bool, int, float)):
            defaults[sym] = sp.Integer(int(h.default)) if h.kind == "bool" else sp.Float(h.default)
    out = []
    for k, e in enumerate(plan.scalar_exprs):
        e = e.xreplace(resolved)
        is_condition = isinstance(e, sp.logic.boolalg.Boolean) or (isinstance(e, sp.Piecewise)
                                        and all(x in (sp.S.Zero, sp.S.One) for x, _ in e.args))
        if not is_condition or t in e.free_symbols:
            continue
        value = e.subs(defaults)
        if value in (sp.true, sp.S.One):
            out.append((k, 1.0))
        elif value in (sp.false, sp.S.Zero):
            out.append((k, 0.0))
    return out


def _variant_context(family: Family, rule: Rule, plan: KernelPlan, prefix: str, hyper_ids: dict) -> dict:
    state_ids = _state_identifiers(rule)
    # Element loop: names for loads, scalars and temporaries.
    elem_names = {rule.param: "param_i", rule.grad: "grad_i"}
    for s in plan.state:
        elem_names[s] = f"{state_ids[s]}_i"
    for i, s in enumerate(plan.scalars):
        elem_names[s] = f"s{i}"
    nloads = len(plan.scalars)
    if plan.reduction is not None:  # per-tensor scalars: extra columns of the scalar table
        nloads += _name_tensor_scalars(plan, elem_names)
    # The element function takes the scalars as s<k> (float64 or the kernel dtype) and computes
    # with k<k>, the same value in the kernel dtype.
    elem_names.update({s: "k" + name[1:] for s, name in elem_names.items() if name.startswith("s")})
    for s, _ in plan.element_temps:
        elem_names[s] = s.name  # _e0, _e1 ... (numbered_symbols, never user text)
    src = {rule.param: "param_c", rule.grad: "grad_c", **{s: f"{state_ids[s]}_c" for s in plan.state}}
    # The element function: every array value of one element (param, grad, each state) and every
    # scalar in, the new param and each new state out (a state no update changes passes through).
    arrays = [rule.param, rule.grad, *plan.state]
    new_value = dict(plan.outputs)
    scalar_args = [f"s{i}" for i in range(nloads)]
    element_args = [elem_names[s] for s in arrays] + scalar_args
    # Where a kernel stores the element function's results (one array: a 1-tuple to unpack).
    targets = ", ".join(f"{src[s]}[i]" for s in [rule.param, *plan.state]) + ("," if not plan.state else "")
    # An element function that numba inlines sees constants as constants: see _switch_defaults.
    switches = _switch_defaults(rule, plan) if len(element_args) <= _MAX_INLINE_ARGS else []
    fixed_args = list(scalar_args)
    for k, value in switches:
        fixed_args[k] = repr(value)
    kernels, elements, steps = [], [], []
    helpers: set = set()  # vectorizable math helpers the kernels call (templates/_vecmath.jinja)
    for suffix, dtype, itemsize in _DTYPES:
        pr = KernelPrinter(elem_names, dtype, vector_math=True)
        element = f"{prefix}_element_{suffix}"
        elements.append({
            "name": element, "args": element_args, "ctor": pr.ctor,
            # CPython compiles a call of more than 30 arguments as f(*args), which numba cannot
            # inline; such an element function is called as a compiled function instead.
            "inline": len(element_args) <= _MAX_INLINE_ARGS,
            "casts": [("k" + a[1:], a) for a in scalar_args],
            "temps": [(elem_names[s], pr.doprint(e)) for s, e in plan.element_temps],
            "returns": [pr.doprint(new_value[s]) if s in new_value else elem_names[s]
                        for s in [rule.param, *plan.state]],
            "doc": _element_doc(rule, plan, prefix, dtype, state_ids, nloads),
        })
        helpers |= pr.helpers
        for parallel in (False, True):
            name = f"{prefix}_{suffix}" + ("_parallel" if parallel else "")
            kernels.append({
                "name": name, "dtype": dtype, "itemsize": itemsize, "parallel": parallel,
                "range": "numba.prange" if parallel else "range",
                "ctor": pr.ctor, "zero": pr.const(0),
                "scalar_loads": [(f"s{i}", i) for i in range(nloads)],
                "element": element, "targets": targets,
                "element_args": [f"{src[s]}[i]" for s in arrays] + scalar_args,
                "switch_test": " and ".join(f"s{k} == {value!r}" for k, value in switches),
                "fixed_args": [f"{src[s]}[i]" for s in arrays] + fixed_args,
                "doc": docstring_text(f"One {rule.name} step over every tensor, {dtype}"
                                      + (", chunks in parallel threads." if parallel else ", serial.")),
                "frame": _frame_unpack(dtype, len(plan.state)),
            })
            steps.append({
                "name": f"{prefix}_step_{suffix}" + ("_parallel" if parallel else ""),
                "kernel": name, "dtype": dtype, "parallel": parallel,
                "reduce": (f"{prefix}_reduce_{suffix}" + ("_parallel" if parallel else ""))
                if plan.reduction is not None else None,
                "row": f"{prefix}_tensor_scalars_{suffix}",
            })
    return {
        **_scalar_context(rule, plan, hyper_ids),
        "prefix": prefix,
        "comment_name": comment_text(rule.name),
        "op_count": plan.op_count,
        "state_args": [state_ids[s] for s in plan.state],
        "ntensor": nloads - len(plan.scalars),
        "elements": elements,
        "kernels": kernels,
        "steps": steps,
        "helpers": helpers,
    }


def _frame_unpack(dtype: str, nstate: int) -> list:
    """The arguments of a flat-ABI kernel read back from its frame, as its ``_frame`` twin passes them:
    ``_view(frame[i], (frame[i + 1], ...), <dtype>)`` per array (address, shape; the state buffers of
    ``dtype``), then ``frame[k] != 0`` for check."""
    out, i = [], 0
    for _, dt, ndim, _ in frame_arrays(dtype, nstate):
        shape = ", ".join(f"frame[{i + 1 + d}]" for d in range(ndim)) + ("," if ndim == 1 else "")
        out.append(f"_view(frame[{i}], ({shape}), np.{dt})")
        i += 1 + ndim
    out.append(f"frame[{i}] != 0")
    return out


def _element_doc(rule: Rule, plan: KernelPlan, prefix: str, dtype: str, state_ids: dict, nloads: int) -> str:
    """Docstring of an element function: its arguments, results and the rule's updates as written."""
    def span(lo, hi):
        return f"s{lo}" if lo == hi else f"s{lo}..s{hi}"

    state = "".join(f", {state_ids[s]}" for s in plan.state)
    ns = len(plan.scalars)
    scalars = f", {span(0, nloads - 1)}" if nloads else ""
    lines = [f"One {rule.name} update of one element in {dtype}: (param, grad{state}{scalars}) -> (param{state}).", ""]
    if ns:
        lines.append(f"{span(0, ns - 1)}: the per-step scalars of {prefix}_scalars(t, ...) (float64 is fine).")
    if nloads > ns:
        lines.append(f"{span(ns, nloads - 1)}: the per-tensor scalars that the reduction pass {prefix}_reduce_* "
                     "writes after the per-step ones.")
    if nloads:
        lines.append(f"k<j> is s<j> in {dtype}, as the array kernels compute.")
    names = {rule.param: "param", rule.grad: "grad", **state_ids}
    lines += ["Arguments as the rule names them: "
              + ", ".join(f"{names[s]} = {s}" for s in [rule.param, rule.grad, *plan.state]) + ".",
              "", "The rule's updates, in order (each right-hand side uses the values already updated):", ""]
    lines += [f"    {lhs} <- {sp.sstr(rhs)}" for lhs, rhs in rule.updates]
    return docstring_text("\n".join(lines))


def _docstring(family: Family) -> str:
    lines = [f"{family.name}: generated optimizer kernels.", ""]
    if family.doc:
        lines += [family.doc.strip(), ""]
    for when, rule in family.variants:
        cond = "" if when == sp.true else f"  (when {sp.sstr(when)})"
        lines.append(f"Variant {rule.name}{cond}:")
        lines.append("")
        lines.append("    " + rule.latex())
        lines.append("")
        lines.append("    hyperparameters: " + ", ".join(
            f"{(h.key or s.name) + ('' if h.index is None else f'[{h.index}]')}={h.user_default!r} in {h.range_text()}"
            for s, h in rule.hyper.items()) if rule.hyper else "    hyperparameters: none")
        if rule.state:
            lines.append("    state: " + ", ".join(
                f"{rule.state_key(s)} (init {expr_latex(rule, sp.sympify(spec.init))})" for s, spec in rule.state.items()))
        lines.append("")
    if family.references:
        lines.append("References: " + "; ".join(family.references))
    return docstring_text("\n".join(lines).rstrip())


def _variant_prefixes(family: Family) -> list:
    taken: set = set()
    return [identifier(rule.name.replace(".", "_"), taken, prefix="rule") for _, rule in family.variants]


# Reduction passes (rules with reductions).  Names in their kernels: ``s<k>`` per-step and
# per-tensor scalars in the kernel dtype, ``_d<k>`` per-step scalars in float64 (finalize step),
# ``_r<k>`` reduction values, ``_g<k>`` global sums, ``_a<k>`` accumulators, ``_e*``/``_f*`` CSE
# temporaries -- never a user name (user identifiers never start with ``_``, ``s<k>`` is reserved).
def _name_tensor_scalars(plan, elem_names: dict) -> int:
    """Name the per-tensor scalars ``s<nscalars + k>`` in the elementwise kernel; returns their count."""
    ns = len(plan.scalars)
    for k, sym in enumerate(plan.reduction.tensor_scalars):
        elem_names[sym] = f"s{ns + k}"
    return len(plan.reduction.tensor_scalars)


def _reduction_runtime_info(plan, prefix: str) -> dict:
    """Plain data for ``FAMILY["variants"][k]["reduce"]`` (read by runtime/reduction.py)."""
    info = plan.reduction
    return {
        "kernel": f"{prefix}_reduce",
        "ntensor": len(info.tensor_scalars),
        "nred": len(info.reductions),
        "stages": len(info.stages),
        "scopes": [r.scope for r in info.reductions],
    }


def _reduction_doc(plan) -> list:
    info = plan.reduction
    lines = []
    for k, r in enumerate(info.reductions):
        lines.append(docstring_text(f"r{k} = {r.scope} {r.op} of {sp.sstr(r.arg)}  (pass {r.stage})"))
    ns = len(plan.scalars)
    for st in info.stages:
        resolved = _resolved(st.tensor_temps)
        for sym, e in st.tensor_outputs:
            col = ns + list(info.tensor_scalars).index(sym)
            lines.append(docstring_text(f"s{col} = {sp.sstr(e.xreplace(resolved))}"))
    return lines


def _reduction_context(rule, plan, prefix: str, state_ids: dict) -> dict:
    """Template context of one variant's reduction kernels."""
    info = plan.reduction
    ns = len(plan.scalars)
    col_of = {sym: ns + k for k, sym in enumerate(info.tensor_scalars)}
    scalar_col = {sym: k for k, sym in enumerate(plan.scalars)}
    elem_names = {rule.param: "param_i", rule.grad: "grad_i"}
    src = {rule.param: "param_c", rule.grad: "grad_c"}
    for s in plan.state:
        elem_names[s] = f"{state_ids[s]}_i"
        src[s] = f"{state_ids[s]}_c"
    for sym, k in scalar_col.items():
        elem_names[sym] = f"s{k}"
    for sym, col in col_of.items():
        elem_names[sym] = f"s{col}"
    red_names = {r.sym: f"_r{k}" for k, r in enumerate(info.reductions)}

    stages = []
    kernel_stages = {suffix: [] for suffix, *_ in _DTYPES}
    max_width = 1
    for st in info.stages:
        temps = list(st.element_temps)
        names = dict(elem_names)
        for sym, _ in temps:
            names[sym] = sym.name  # _e0, _e1 ... (numbered_symbols)
        used = set()
        for e in [*st.element_exprs, *(x for _, x in temps)]:
            used |= e.free_symbols
        loads = [(f"s{scalar_col[s]}", scalar_col[s]) for s in plan.scalars if s in used]
        loads += [(f"s{col_of[s]}", col_of[s]) for s in info.tensor_scalars if s in used]
        pointer_views = [(src[s], "pptr" if s == rule.param else "gptr") for s in st.reads
                         if s in (rule.param, rule.grad)]
        state_views = [(src[s], state_ids[s]) for s in st.reads if s in state_ids]
        element_loads = [(elem_names[s], src[s]) for s in st.reads]
        accs = [(f"_a{q}", q) for q in range(len(st.reductions))]
        max_width = max(max_width, len(st.reductions))
        for suffix, dtype, *_ in _DTYPES:
            pr = KernelPrinter(names, dtype)
            kernel_stages[suffix].append({
                "temps": [(names[s], pr.doprint(e)) for s, e in temps],
                "sums": [(f"_a{q}", pr.doprint(e)) for q, e in enumerate(st.element_exprs)],
            })
        # Finalize: reduction values, then per-tensor scalars, in float64.
        fin_names = {}
        fused = set()
        for sym, e in [*st.tensor_temps, *st.tensor_outputs]:
            fused |= e.free_symbols
        values = []
        for k, r in enumerate(info.reductions):
            if r.sym not in fused:
                continue
            name = red_names[r.sym]
            fin_names[r.sym] = name
            if r.scope == "tensor":
                code = f"_red[j, {k}]" + (" / _count[j]" if r.op == "mean" else "")
            else:
                code = f"_g{k}" + (" / _total" if r.op == "mean" else "")
            values.append((name, code))
        finalize_loads = []
        for s in plan.scalars:
            if s in fused:
                fin_names[s] = f"_d{scalar_col[s]}"
                finalize_loads.append((fin_names[s], scalar_col[s]))
        for sym, _ in st.tensor_temps:
            fin_names[sym] = sym.name  # _f0, _f1 ...
        fp = KernelPrinter(fin_names, "float64")
        stages.append({
            "index": st.index,
            "comment": comment_text(", ".join(f"r{k} ({info.reductions[k].scope} {info.reductions[k].op})"
                                              for k in st.reductions)),
            "loads": loads,
            "pointer_views": pointer_views,
            "state_views": state_views,
            "element_loads": element_loads,
            "accumulators": accs,
            "part_to_red": [(q, k) for q, k in enumerate(st.reductions)],
            "globals": [(f"_g{k}", k) for k in st.reductions if info.reductions[k].scope == "global"],
            "red_values": values,
            "finalize_loads": finalize_loads,
            "finalize_temps": [(fin_names[s], fp.doprint(e)) for s, e in st.tensor_temps],
            "finalize_stores": [(col_of[s], fp.doprint(e)) for s, e in st.tensor_outputs],
        })
    kernels = []
    for suffix, dtype, itemsize in _DTYPES:
        pr = KernelPrinter({}, dtype)
        for parallel in (False, True):
            kernels.append({
                "name": f"{prefix}_reduce_{suffix}" + ("_parallel" if parallel else ""),
                "dtype": dtype, "itemsize": itemsize, "parallel": parallel,
                "range": "numba.prange" if parallel else "range", "ctor": pr.ctor,
                "stages": kernel_stages[suffix],
                "doc": docstring_text(f"Reduction passes of {rule.name}, {dtype}"
                                      + (", chunks in parallel threads." if parallel else ", serial.")),
            })
    return {
        "comment_name": comment_text(rule.name),
        "nstages": len(info.stages),
        "nred": len(info.reductions),
        "ntensor": len(info.tensor_scalars),
        "nscalars": ns,
        "max_width": max_width,
        "state_args": [state_ids[s] for s in plan.state],
        "reduction_doc": _reduction_doc(plan),
        "stages": stages,
        "kernels": kernels,
    }


def _module_context(family: Family, template: str, data: dict, variants: list, source_label: str | None) -> dict:
    """The context every family template shares: header, docstring, FAMILY literal, the variant
    conditions and constraint checks (printed over ``h[...]``), the variants and their vector math."""
    hyper_ids = hyper_identifiers(family)
    cond_printer = ScalarPrinter({s: f"h[{hyper_ids[s]!r}]" for s in family.hyper})
    return {
        "header": header(family.name, source_label or family.source, template, family_hash(family)),
        "docstring": _docstring(family),
        "family_literal": python_literal(data, width=100),
        "variant_conditions": [cond_printer.doprint(w) for w, _ in family.variants],
        "constraint_checks": [(cond_printer.doprint(c), string_literal(m)) for c, m in family.constraints],
        "variants": variants,
        "vector_math": sorted(set().union(*(v["helpers"] for v in variants))),
    }


def render_family(family: Family, *, source_label: str | None = None) -> str:
    """Source text of the generated module for ``family`` (a matrix family: :func:`render_matrix_family`)."""
    if is_factored_family(family):
        return render_factored_family(family, source_label=source_label)
    if is_preconditioned_family(family):
        return render_preconditioned_family(family, source_label=source_label)
    if is_matrix_family(family):
        return render_matrix_family(family, source_label=source_label)
    plans = [make_plan(rule) for _, rule in family.variants]
    hyper_ids = hyper_identifiers(family)
    prefixes = _variant_prefixes(family)
    data = _family_data(family, plans, hyper_ids, prefixes)
    state_ids = [_state_identifiers(rule) for _, rule in family.variants]
    ctx = _module_context(family, OPTIMIZER_TEMPLATE, data, [_variant_context(family, r, p, pre, hyper_ids)
                          for (_, r), p, pre in zip(family.variants, plans, prefixes)], source_label)
    ctx["reduction_variants"] = [_reduction_context(rule, plan, prefix, ids)
                                 for (_, rule), plan, prefix, ids in zip(family.variants, plans, prefixes, state_ids)
                                 if plan.reduction is not None]
    return environment().get_template(OPTIMIZER_TEMPLATE).render(**ctx)


# ----------------------------------------------------------------------------- matrix rules
_BLAS_PREFIX = {"float32": "s", "float64": "d"}


def _matrix_variant_context(rule: Rule, plan, prefix: str, hyper_ids: dict) -> dict:
    """Names and printed code of one matrix variant (:mod:`.plan_matrix`): scalar functions, the
    per-tensor scalars, the two element passes per dtype and the iteration's arguments."""
    state_ids = _state_identifiers(rule)
    # Per-tensor scalars: s[ns + k], from s[k], the reductions, rows and cols (float64, Python).
    ns = len(plan.scalars)
    table = {sym: f"scal[{k}]" for k, sym in enumerate(plan.scalars)}
    reduction_names = [f"_r{k}" for k in range(len(plan.reductions))]
    tnames = {**{sym: f"s[{k}]" for k, sym in enumerate(plan.scalars)},
              **{sym: name for (sym, _), name in zip(plan.reductions, reduction_names)},
              rows: "rows", cols: "cols"}
    for k, (sym, _) in enumerate(plan.tensor_scalars):
        tnames[sym] = f"s[{ns + k}]"
        table[sym] = f"scal[{ns + k}]"
    tp = ScalarPrinter(tnames)
    finals = [(name, f"{name} / (rows * cols)") for (_, op), name in zip(plan.reductions, reduction_names)
              if op == "mean"]
    tensor_codes = [(ns + k, tp.doprint(e)) for k, (_, e) in enumerate(plan.tensor_scalars)]
    tensor_doc = [docstring_text(f"{sym.name} = {sp.sstr(e)}") for sym, e in plan.tensor_scalars]
    it = plan.iteration

    def scalar_arg(x):
        return table[x] if x in table else repr(float(x))

    elem = _matrix_element_names(rule, plan, state_ids)
    nsc = ns + len(plan.tensor_scalars)
    src = {rule.param: "param_c", rule.grad: "grad_c", RESULT: "result", WORK: "work",
           **{s: f"{state_ids[s]}_c" for s in plan.state}}
    kernels = []
    helpers: set = set()
    for suffix, dtype, itemsize in _DTYPES:
        pr = KernelPrinter(elem, dtype, vector_math=True)
        passes = []
        for index, ps in enumerate(plan.passes):
            sums = [f"_a{k}" for k in range(len(ps.sums))]
            passes.append({
                "index": index, "buffer": "work" if index == 0 else "result",
                "loads": [(elem[s], src[s]) for s in ps.reads],
                "temps": [(elem[s], pr.doprint(e)) for s, e in ps.element_temps],
                "stores": [(src[tgt], pr.doprint(e)) for tgt, e in ps.stores],
                "sums": sums, "sum_codes": [(a, pr.doprint(e)) for a, (_, e) in zip(sums, ps.sums)],
                "doc": docstring_text(f"Pass {index} of {rule.name} over one tensor ({dtype}): "
                                      + ("the updates before the iteration, its start value into work, "
                                         "the sums of its factor." if index == 0 else
                                         "the updates from the iteration's result on.")),
            })
        helpers |= pr.helpers
        kernels.append({
            "name": f"{prefix}_{suffix}", "dtype": dtype, "itemsize": itemsize, "ctor": pr.ctor,
            "zero": pr.const(0), "blas": _BLAS_PREFIX[dtype], "passes": passes,
            "scalar_loads": [(f"s{k}", k) for k in range(nsc)],
        })
    return {
        **_scalar_context(rule, plan, hyper_ids),
        "prefix": prefix, "comment_name": comment_text(rule.name), "op_count": plan.op_count,
        "state_args": [state_ids[s] for s in plan.state],
        "reduction_names": reduction_names, "reduction_finals": finals, "tensor_codes": tensor_codes,
        "tensor_doc": tensor_doc or ["(none)"],
        "count": scalar_arg(it.count), "scale": scalar_arg(it.scale),
        "coefficients": [scalar_arg(q) for q in it.coefficients],
        "kernels": kernels, "helpers": helpers,
    }


def _matrix_element_names(rule: Rule, plan, state_ids: dict) -> dict:
    """Names of a matrix plan's per-element values in printed code: ``param_i``, ``grad_i``,
    ``result_i``, ``<state>_i``, ``s<k>`` for the per-step then per-tensor scalars, and the
    planner's own temporaries (``_v<k>``, ``_w<k>``: never user text)."""
    ns = len(plan.scalars)
    elem = {rule.param: "param_i", rule.grad: "grad_i", RESULT: "result_i",
            **{s: f"{state_ids[s]}_i" for s in plan.state}}
    elem.update({sym: f"s{k}" for k, sym in enumerate(plan.scalars)})
    elem.update({sym: f"s{ns + k}" for k, (sym, _) in enumerate(plan.tensor_scalars)})
    elem.update({sym: sym.name for ps in plan.passes for sym, _ in ps.element_temps})
    return elem


def render_matrix_family(family: Family, *, source_label: str | None = None) -> str:
    """Source text of the generated module of a family of matrix rules (``matrix_module.py.jinja``)."""
    plans = [make_matrix_plan(rule) for _, rule in family.variants]
    hyper_ids = hyper_identifiers(family)
    prefixes = _variant_prefixes(family)
    data = _family_data(family, plans, hyper_ids, prefixes)
    for info, plan in zip(data["variants"], plans):
        info["matrix"] = {"ntensor_scalars": len(plan.tensor_scalars)}
    ctx = _module_context(family, MATRIX_TEMPLATE, data, [_matrix_variant_context(r, p, pre, hyper_ids)
                          for (_, r), p, pre in zip(family.variants, plans, prefixes)], source_label)
    return environment().get_template(MATRIX_TEMPLATE).render(**ctx)


# ----------------------------------------------------------------------------- factored rules
# Names in a factored kernel: ``s<k>`` per-step scalars (kernel dtype), ``_t<k>``/``_k<k>`` per-tensor
# scalars (float64 / kernel dtype), ``_r<k>``/``_m<k>`` reductions and per-matrix means, ``_p<n>e<k>``
# CSE temporaries, ``_a*``/``_q*`` accumulators -- never a user name (user identifiers never start with ``_``).
def _factored_layout_context(rule: Rule, plan, lay, prefix: str, state_ids: dict) -> dict:
    """Printed code of one layout (``matrix``/``vector``) of a factored variant, per dtype."""
    # the workspace: the row values (nb·nr each), the column values (nb·nc each), the per-matrix values
    # and the per-matrix partials of the tensor reductions (nb each), in that order
    parts = ("row", "col", "matrix", "tensor")
    extent = {"row": "nb * nr", "col": "nb * nc", "matrix": "nb", "tensor": "nb"}

    def offset(part, k):
        coeff: dict = {}  # extent -> how many of it precede the slot
        for q in parts[:parts.index(part)]:
            coeff[extent[q]] = coeff.get(extent[q], 0) + lay.workspace[q]
        coeff[extent[part]] = coeff.get(extent[part], 0) + k
        return " + ".join(f"{c} * {e}" if c > 1 else e for e, c in coeff.items() if c) or "0"

    def slot(part, k, i):
        off = offset(part, k)
        return f"ws[{i}]" if off == "0" else f"ws[{off} + {i}]"
    index = {"element": "e", "row": "ri", "col": "cj", "matrix": "b", "tensor": "b"}  # tensor: matrix b's partial
    names = {rule.param: "param_i", rule.grad: "grad_i", machine_eps: "_meps"}
    for s in lay.states:
        names[s] = f"{state_ids[s]}_i"
    for k, sym in enumerate(plan.scalars):
        names[sym] = f"s{k}"
    tensor_syms = [sym for st in lay.stages for sym, _ in st.tensor_scalars]
    for k, sym in enumerate(tensor_syms):
        names[sym] = f"_k{k}"
    for sym in lay.kinds:
        if sym not in names:
            names[sym] = f"_{sym.name}"  # reductions r<k>, per-matrix means m<k>
    for loop in lay.loops:
        for sym, _ in loop.temps:
            names[sym] = sym.name
    tnames = {**{sym: f"scal[{k}]" for k, sym in enumerate(plan.scalars)},
              **{sym: f"_t{k}" for k, sym in enumerate(tensor_syms)},
              **{sym: names[sym] for sym, kind in lay.kinds.items() if kind == "tensor"}, machine_eps: "_meps"}
    tp = KernelPrinter(tnames, "float64")

    def source(sym, dtype_ctor):
        kind = lay.kinds[sym]
        if sym in lay.slots:
            part, k = lay.slots[sym]
            return f"{dtype_ctor}({slot(part, k, index[kind])})"
        if sym == rule.param:
            return "param_c[e]"
        if sym == rule.grad:
            return "grad_c[e]"
        return f"{state_ids[sym]}_c[{index[kind]}]"

    # a stack of matrices also gets a threaded twin of its kernel (the matrices over the threads)
    out = {"name": lay.name, "states": [state_ids[s] for s in lay.states], "kernels": [],
           "threaded": lay.name == "matrix",
           "tensor_doc": [docstring_text(f"{sym.name} = {sp.sstr(e)}") for st in lay.stages
                          for sym, e in st.tensor_scalars] or ["(none)"]}
    for suffix, dtype, *_ in _DTYPES:
        pr = KernelPrinter(names, dtype, vector_math=True)

        def loads(syms, kinds):
            return [(names[s], source(s, pr.ctor)) for s in syms if lay.kinds.get(s) in kinds]

        stages = []
        for k, st in enumerate(lay.stages):
            first = sum(len(x.tensor_scalars) for x in lay.stages[:k])
            stage = {"tensor": [(f"_t{first + i}", f"_k{first + i}", tp.doprint(e))
                                for i, (_, e) in enumerate(st.tensor_scalars)],
                     "rows": [], "cols": [], "means": []}
            for kind, stores, key in (("row", st.row_stores, "rows"), ("col", st.col_stores, "cols")):
                for target, e in stores:
                    syms = sorted(e.free_symbols, key=sp.default_sort_key)
                    stage[key].append({"loads": loads(syms, (kind,)) + loads(syms, ("matrix",)),
                                       "target": f"{state_ids[target]}_c", "code": pr.doprint(e)})
            for sym, scope, e in st.means:
                syms = sorted(e.free_symbols, key=sp.default_sort_key)
                part, k2 = lay.slots[sym]
                stage["means"].append({"scope": scope, "loads": loads(syms, (scope,)), "code": pr.doprint(e),
                                       "target": slot(part, k2, "b")})
            stages.append(stage)
        loops = []
        for k, loop in enumerate(lay.loops):
            sums = {"tensor": [], "row": [], "col": []}
            for i, (sym, scope, op, e) in enumerate(loop.sums):
                acc = f"_a{k}_{i}"
                part, k2 = lay.slots[sym]
                entry = {"acc": acc, "code": pr.doprint(e), "name": names[sym], "mean": op == "mean",
                         "target": slot(part, k2, index[scope])}
                if scope == "tensor":  # matrix b's partial at base + b
                    entry["base"] = offset(part, k2)
                sums[scope].append(entry)
            loops.append({
                "matrix_loads": loads(loop.reads, ("matrix",)), "row_loads": loads(loop.reads, ("row",)),
                "inner_loads": loads(loop.reads, ("col", "element")),
                "temps": [(names[s], pr.doprint(e)) for s, e in loop.temps],
                "stores": [(f"{'param' if s == rule.param else state_ids[s]}_c[e]", pr.doprint(e))
                           for s, e in loop.stores],
                "sums": sums,
            })
        out["kernels"].append({"name": f"{prefix}_{suffix}_{lay.name}", "dtype": dtype, "ctor": pr.ctor,
                               "meps": repr(float(_MACHINE_EPS[dtype])), "stages": stages, "loops": loops})
        out.setdefault("helpers", set()).update(pr.helpers)
    return out


_MACHINE_EPS = {"float32": 2.0**-23, "float64": 2.0**-52}


def _factored_variant_context(rule: Rule, plan, prefix: str, hyper_ids: dict) -> dict:
    state_ids = _state_identifiers(rule)
    layouts = [_factored_layout_context(rule, plan, lay, prefix, state_ids) for lay in plan.layouts]
    return {
        **_scalar_context(rule, plan, hyper_ids),
        "prefix": prefix, "comment_name": comment_text(rule.name), "op_count": plan.op_count, "layouts": layouts,
        "checks": [{"suffix": suffix, "dtype": dtype, "itemsize": itemsize, "zero": KernelPrinter({}, dtype).const(0)}
                   for suffix, dtype, itemsize in _DTYPES],
        "helpers": set().union(*(lay["helpers"] for lay in layouts)),
    }


def render_factored_family(family: Family, *, source_label: str | None = None) -> str:
    """Source text of the generated module of a family of factored rules (``factored_module.py.jinja``)."""
    plans = [make_factored_plan(rule) for _, rule in family.variants]
    hyper_ids = hyper_identifiers(family)
    prefixes = _variant_prefixes(family)
    data = _family_data(family, plans, hyper_ids, prefixes)
    for info, plan, (_, rule) in zip(data["variants"], plans, family.variants):
        for entry, sym in zip(info["state"], plan.state):
            entry["shape"] = rule.state[sym].shape
        info["factored"] = {lay.name: {"states": [rule.state_key(s) for s in lay.states], **lay.workspace}
                            for lay in plan.layouts}
        # the hyperparameter that decides, per param, between the two layouts (None: the param's ndim)
        info["factored"]["min_dim_key"] = (rule.hyper_key(min_dim_to_factor) if min_dim_to_factor in rule.hyper
                                           else None)
    ctx = _module_context(family, FACTORED_TEMPLATE, data, [_factored_variant_context(r, p, pre, hyper_ids)
                          for (_, r), p, pre in zip(family.variants, plans, prefixes)], source_label)
    return environment().get_template(FACTORED_TEMPLATE).render(**ctx)


# ----------------------------------------------------------------------------- preconditioned rules
def _preconditioned_variant_context(rule: Rule, plan, prefix: str, hyper_ids: dict) -> dict:
    """Names and printed code of one preconditioned variant (:mod:`.plan_preconditioned`): the
    scalar functions, the element passes per dtype and the BLAS/LAPACK calls between them."""
    state_ids = _state_identifiers(rule)
    ns = len(plan.scalars)
    table = {sym: f"scal[{k}]" for k, sym in enumerate(plan.scalars)}

    def scalar_arg(x):
        return table[x] if x in table else repr(float(x))

    buffers = [b.name for b in plan.buffers]   # work<k>, result<k>: the planner's names
    elem = {rule.param: "param_i", rule.grad: "grad_i", **{b: f"{b.name}_i" for b in plan.buffers},
            **{s: f"{state_ids[s]}_i" for s in plan.state}, **{sym: f"s{k}" for k, sym in enumerate(plan.scalars)}}
    for ps in plan.passes:
        for sym, _ in ps.element_temps:
            elem[sym] = sym.name  # _v<k>, _w<k>, ...: the planner's names, never user text
    src = {rule.param: "param_c", rule.grad: "grad_c", **{b: b.name for b in plan.buffers},
           **{s: f"{state_ids[s]}_c" for s in plan.state}}
    stages = []
    for k, stage in enumerate(plan.stages):
        ops = []
        for op in stage.ops:
            entry = {"kind": op.kind, "target": op.target, "source": op.source,
                     "when": None if op.when is None else plan.scalars.index(op.when),
                     "pad": "" if op.when is None else "    "}
            if op.kind == "gram":
                entry.update(alpha=scalar_arg(op.coefficients[0]), beta=scalar_arg(op.coefficients[1]))
            elif op.kind == "inverse_root":   # the order c · n_axes^e
                c, e = op.coefficients
                entry["root"] = scalar_arg(c) + (" * len(dims)" if e else "")
            else:   # eigenbasis: the reordered state
                entry.update(first=scalar_arg(op.coefficients[0]), reorder=f"{state_ids[op.reorder]}_c")
            ops.append(entry)
        pr = stage.product
        product = None
        if pr is not None:
            # The mode product's factor of each axis: (matrix, transposed, symmetric).  Every axis: the
            # left factor A.  The d0 × (d1⋯) matrix A G B: A on axis 0, Bᵀ on axis 1 ((G B)ᵀ = Bᵀ Gᵀ).
            def factor(j, transposed, axis="0"):
                return f"(mats[{j}][{axis}], {int(transposed)}, {plan.symmetric[j]})"
            if plan.every_axis:
                product = f"_factors(mats[{pr.left}], {int(pr.left_transposed)}, {plan.symmetric[pr.left]})"
            else:
                product = "({}, {})".format(
                    "None" if pr.left is None else factor(pr.left, pr.left_transposed, "0"),
                    "None" if pr.right is None else factor(pr.right, not pr.right_transposed, "1"))
        normalize = None
        if pr is not None and pr.normalize is not None:    # RMSNormalized: (ε, the flag's column)
            normalize = {"eps": scalar_arg(pr.normalize[0]),
                         "when": scalar_arg(pr.normalize[1]) if pr.normalize[1] in table else None}
            if normalize["when"] is None and float(pr.normalize[1]) == 0.0:
                normalize = None
        stages.append({"ops": ops, "product": product, "normalize": normalize})
    keep = ScalarPrinter({rows: "d", n_axes: "ndim", **{sym: f"scal[{k}]" for k, sym in enumerate(plan.scalars)}})
    kernels, helpers = [], set()
    for suffix, dtype, itemsize in _DTYPES:
        pr = KernelPrinter(elem, dtype, vector_math=True)
        passes = [{
            "index": index,
            "loads": [(elem[s], src[s]) for s in ps.reads],
            "temps": [(elem[s], pr.doprint(e)) for s, e in ps.element_temps],
            "stores": [(src[tgt], pr.doprint(e)) for tgt, e in ps.stores],
            "doc": docstring_text(f"Pass {index} of {rule.name} over one tensor ({dtype}): "
                                  + ("the updates before the first preconditioned value" if index == 0 else
                                     f"the updates from preconditioned value {index - 1} on")
                                  + (f", the start value of preconditioned value {index} into work{index}."
                                     if index < len(plan.passes) - 1 else ".")),
        } for index, ps in enumerate(plan.passes)]
        helpers |= pr.helpers
        kernels.append({"name": f"{prefix}_{suffix}", "dtype": dtype, "itemsize": itemsize,
                        "ctor": pr.ctor, "zero": pr.const(0), "blas": _BLAS_PREFIX[dtype], "passes": passes,
                        "scalar_loads": [(f"s{k}", k) for k in range(ns)]})
    return {
        **_scalar_context(rule, plan, hyper_ids),
        "prefix": prefix, "comment_name": comment_text(rule.name), "op_count": plan.op_count,
        "npasses": len(plan.passes), "state_args": [state_ids[s] for s in plan.state],
        "matrix_keys": [key for key, _, _ in plan.matrix_states], "buffers": buffers,
        "stages": stages, "kernels": kernels, "helpers": helpers, "keep": keep.doprint(plan.keep),
        "dims_doc": ("the tensor's shape (every axis preconditioned)" if plan.every_axis
                 else "(d0, d1⋯), the param read as a matrix"),
    }


def render_preconditioned_family(family: Family, *, source_label: str | None = None) -> str:
    """Source text of the generated module of a family of preconditioned rules
    (``preconditioned_module.py.jinja``)."""
    plans = [make_preconditioned_plan(rule) for _, rule in family.variants]
    hyper_ids = hyper_identifiers(family)
    prefixes = _variant_prefixes(family)
    data = _family_data(family, plans, hyper_ids, prefixes)
    for info, plan in zip(data["variants"], plans):
        # The runtime's description of the matrix states: key, side and initial diagonal (a per-step
        # scalar's column, read at a tensor's first step, or a number).
        # The sides an eigenbasis may rotate: the largest length (a per-step scalar's column or a number).
        limits = [{"side": op.side, **({"column": plan.scalars.index(op.coefficients[1])}
                                       if op.coefficients[1] in plan.scalars else {"value": float(op.coefficients[1])})}
                  for stage in plan.stages for op in stage.ops if op.kind == "eigenbasis" and not plan.every_axis]
        info["matrix"] = {"kind": "preconditioned", "ntensor_scalars": 0, "buffers": len(plan.buffers),
                          "every_axis": plan.every_axis, "keep_all": plan.keep == sp.true,
                          "merge": ({"column": plan.scalars.index(plan.merge)} if plan.merge in plan.scalars
                                    else {"value": float(plan.merge)}),
                          "max_ndim": 2 if not (plan.every_axis or all(plan.symmetric)) else None,
                          "limits": limits, "states": [
            {"key": key, "side": side,
             **({"init_column": plan.scalars.index(d)} if d in plan.scalars else {"init": float(d)})}
            for key, side, d in plan.matrix_states]}
    ctx = _module_context(family, PRECONDITIONED_TEMPLATE, data, [_preconditioned_variant_context(r, p, pre, hyper_ids)
                          for (_, r), p, pre in zip(family.variants, plans, prefixes)], source_label)
    ctx["eigenbasis"] = not all(all(p.symmetric) for p in plans)
    return environment().get_template(PRECONDITIONED_TEMPLATE).render(**ctx)


# ----------------------------------------------------------------------------- symopt.nn modules
_KERNEL_NAMES = {"z", "target", "labels", "out", "scale_in", "scale", "x", "y", "g", "total", "i", "j", "r",
                 "lab", "index", "consts", "k", "grad", "need_grad"}


def nn_module_name(kind: str, name: str) -> str:
    """``nn_loss_<name>`` or ``nn_act_<name>`` (never collides with an optimizer rule module)."""
    return f"nn_{'loss' if kind == 'loss' else 'act'}_{name}"


def _hyper_data(spec, ids: dict) -> list:
    return [{"name": ids[s], "key": h.key or s.name, "default": h.default, "low": _num(h.low), "high": _num(h.high),
             "low_open": h.low_open, "high_open": h.high_open, "doc": h.doc} for s, h in spec.hyper.items()]


def _nn_hyper_identifiers(spec) -> dict:
    taken = set(_KERNEL_NAMES)
    return {s: identifier(s.name, taken, prefix="h") for s in spec.hyper}


def _used(temps, outputs) -> set:
    out: set = set()
    for _, e in temps:
        out |= e.free_symbols
    for e in outputs:
        out |= e.free_symbols
    return out


# ----------------------------------------------------------------------------- elementwise
def _elementwise_kernels(plan, hyper_ids: dict) -> list:
    spec = plan.spec
    kernels = []
    if spec.kind == "loss":
        elem = {spec.x: ("z_i", "z"), spec.target: ("y_i", "target")}
        layout = [("value", ["z", "target"], False), ("value_and_grad", ["z", "target", "scale_in", "out"], True)]
        length = "z"
    else:
        elem = {spec.x: ("x_i", "x"), spec.output: ("y_i", "y"), UPSTREAM: ("g_i", "g")}
        layout = [("forward", ["x", "out"], True), ("backward", ["x", "y", "g", "out"], True)]
        length = "x"
    for suffix, dtype, *_ in _DTYPES:
        for kname, arrays, writes in layout:
            temps, reduced = plan.bodies[kname]
            names = {s: n for s, (n, _) in elem.items()}
            names.update({s: f"{hyper_ids[s]}_t" for s in spec.hyper})
            names[SCALE] = "scale"
            for s, _ in temps:
                names[s] = s.name
            pr = KernelPrinter(names, dtype, vector_math=spec.kind != "loss")  # activations: vectorized exp/tanh
            used = _used(temps, reduced)
            prologue = [(f"{hyper_ids[s]}_t", f"{pr.ctor}({hyper_ids[s]})") for s in spec.hyper if s in used]
            if SCALE in used:
                prologue.append(("scale", f"{pr.ctor}(scale_in)"))
            loss = spec.kind == "loss"
            if loss:
                prologue.append(("total", "0.0"))
            loads = [(n, arr) for s, (n, arr) in elem.items() if s in used]
            stores, accumulate = [], []
            if loss:
                accumulate.append(pr.doprint(reduced[0]))
                if writes:
                    stores.append(("out", pr.doprint(reduced[1])))
            else:
                stores.append(("out", pr.doprint(reduced[0])))
            what = {
                "value": "Sum over i of the loss at (z[i], target[i]), accumulated in float64.",
                "value_and_grad": "Sum of the losses; out[i] = scale * dloss/dz at element i.",
                "forward": "out[i] = f(x[i]).",
                "backward": "out[i] = g[i] * f'(x[i]) (y[i] = f(x[i]) may be used instead of x[i]).",
            }[kname]
            kernels.append({
                "name": f"{kname}_{suffix}",
                "args": arrays + [hyper_ids[s] for s in spec.hyper],
                "doc": docstring_text(f"{spec.name} {kname}, {dtype} arrays (1-D, C-contiguous). {what}"),
                "prologue": prologue, "length": length, "loads": loads,
                "temps": [(names[s], pr.doprint(e)) for s, e in temps],
                "stores": stores, "accumulate": accumulate, "result": "total" if loss else "",
                "helpers": pr.helpers,
            })
    return kernels


def _elementwise_docstring(plan) -> str:
    spec = plan.spec
    lines = [f"{spec.kind} {spec.name}: generated kernels.", "", spec.doc, ""]
    lhs = r"\ell(z, y)" if spec.kind == "loss" else "f(x)"
    dlhs = r"\partial \ell / \partial z" if spec.kind == "loss" else "f'(x)"
    lines.append(f"Definition:  {lhs} = {spec.latex()}")
    if spec.kernel_expr != spec.expr:
        lines.append(f"Kernel form: {lhs} = {spec.latex(spec.kernel_expr)}")
    lines.append(f"Derivative (sympy.diff, then the cheapest accurate form: {plan.chosen}):")
    lines.append(f"    {dlhs} = {spec.latex(plan.display)}")
    if spec.convention:
        lines.append(f"Convention at kinks: {spec.convention}")
    lines.append("")
    lines.append(f"Operations per element: forward {plan.forward_ops}, derivative {plan.derivative_ops} "
                 f"(sympy.diff as given: {plan.raw_ops}).")
    lines.append("Candidates for the derivative (ops, max error vs the textbook derivative at the check points):")
    for c in plan.candidates:
        mark = "" if c.accepted else "  [rejected: inaccurate]"
        lines.append(f"    {c.label}: {c.ops} ops, error {c.max_err:.2g}{mark}")
    return docstring_text("\n".join(lines))


def render_elementwise(plan) -> str:
    """Module text for an :class:`~symopt.codegen.plan_gradients.ElementPlan`."""
    spec = plan.spec
    ids = _nn_hyper_identifiers(spec)
    digest = input_hash(ELEMENTWISE_TEMPLATE, spec.fingerprint())
    data = {
        "name": spec.name, "kind": spec.kind, "shape": "elementwise", "doc": spec.doc,
        "hyper": _hyper_data(spec, ids), "target_kind": spec.target_kind, "convention": spec.convention,
        "latex": {"definition": spec.latex(), "derivative": spec.latex(plan.display)},
        "derivative_form": plan.chosen,
        "derivative_uses_output": bool(spec.output is not None and spec.output in plan.derivative.free_symbols),
        "op_count": {"forward": plan.forward_ops, "derivative": plan.derivative_ops, "raw_derivative": plan.raw_ops},
    }
    ctx = {
        "header": header(f"nn {spec.kind} {spec.name}", "symopt.nn", ELEMENTWISE_TEMPLATE, digest),
        "docstring": _elementwise_docstring(plan),
        "spec_literal": pprint.pformat(data, width=100, sort_dicts=False),
        "kernels": _elementwise_kernels(plan, ids),
    }
    ctx["vector_math"] = sorted(set().union(*(k["helpers"] for k in ctx["kernels"])))
    return environment().get_template(ELEMENTWISE_TEMPLATE).render(**ctx)


# ----------------------------------------------------------------------------- row-wise
def _rowwise_kernels(plan) -> list:
    spec = plan.spec
    loss = spec.kind == "loss"
    arr = "z" if loss else "x"
    taken = set(_KERNEL_NAMES)
    names = {}
    for s in (spec.element, spec.onehot, spec.picked, spec.upstream, spec.output,
              *[r[0] for r in spec.forward_reductions], *[r[0] for r in spec.grad_reductions]):
        if s is not None:
            names[s] = identifier(s.name, taken, prefix="v")
    names[SCALE] = "scale"
    arguments = {"value": ["z", "labels"], "value_and_grad": ["z", "labels", "scale_in", "out"],
                 "forward": ["x", "out"], "backward": ["x", "y", "g", "out"]}
    kernels = []
    for kname, kernel in plan.kernels.items():
        args = arguments[kname]
        for suffix, dtype, *_ in _DTYPES:
            nm = dict(names)
            for step in kernel.steps:
                if step[0] == "row":
                    nm[step[1]] = step[1].name
            pr = KernelPrinter(nm, dtype)
            one, zero = pr.const(1), pr.const(0)
            src = {spec.element: f"{arr}[r, j]", spec.upstream: "g[r, j]", spec.output: "y[r, j]",
                   spec.onehot: f"{one} if j == lab else {zero}"}

            def loads(exprs, nm=nm, src=src):
                used: set = set()
                for e in exprs:
                    used |= e.free_symbols
                return [(nm[s], src[s]) for s in (spec.element, spec.onehot, spec.upstream, spec.output)
                        if s is not None and s in used]

            steps = []
            for step in kernel.steps:
                if step[0] == "reduce":
                    _, sym, op, e = step
                    code = pr.doprint(e)
                    steps.append({"kind": "reduce", "name": nm[sym], "loads": loads([e]),
                                  "init": f"{pr.ctor}(-np.inf)" if op == "max" else zero,
                                  "reduce_code": f"max({nm[sym]}, {code})" if op == "max" else f"{nm[sym]} + {code}"})
                elif step[0] == "row":
                    steps.append({"kind": "row", "name": nm[step[1]], "code": pr.doprint(step[2])})
                else:
                    _, temps, red = step
                    for s, _ in temps:
                        nm[s] = s.name
                    steps.append({"kind": "elements", "loads": loads([red, *(e for _, e in temps)]),
                                  "temps": [(s.name, pr.doprint(e)) for s, e in temps], "code": pr.doprint(red)})
            prologue = [("scale", f"{pr.ctor}(scale_in)")] if kernel.scaled else []
            row_loads, accumulate = [], []
            if loss:
                row_loads.append(("lab", "labels[r]"))
            if kernel.value is not None:
                prologue.append(("total", "0.0"))
                if spec.picked in kernel.value.free_symbols:
                    row_loads.append((nm[spec.picked], f"{arr}[r, lab]"))
                accumulate.append(pr.doprint(kernel.value))
            what = {
                "value": "Sum over rows of the loss of row r at label labels[r].",
                "value_and_grad": "Sum of the row losses; out[r, j] = scale * dL_r/dz[r, j].",
                "forward": "out[r, :] = softmax(x[r, :]).",
                "backward": "out[r, j] = sum_k g[r, k] dp_k/dx_j with y = softmax(x) (vector-Jacobian product).",
            }[kname]
            kernels.append({
                "name": f"{kname}_{suffix}", "args": args, "rows": arr, "prologue": prologue,
                "row_loads": row_loads, "steps": steps, "accumulate": accumulate,
                "result": "total" if kernel.value is not None else "",
                "doc": docstring_text(f"{spec.name} {kname}, {dtype} arrays (2-D, C-contiguous). {what}"),
            })
    return kernels


def render_rowwise(plan) -> str:
    """Module text for a :class:`~symopt.codegen.plan_gradients.RowPlan`."""
    spec = plan.spec
    digest = input_hash(ROWWISE_TEMPLATE, spec.fingerprint())
    kernels = _rowwise_kernels(plan)
    ops = {name: kernel.ops for name, kernel in plan.kernels.items()}
    lines = [f"{spec.kind} {spec.name}: generated kernels.", "", spec.doc, "",
             "Definition and derivative (SymPy, over indexed sums):", f"    {spec.textbook}", "",
             "As SymPy derived it:"]
    for label, e in spec.derived.items():
        lines.append(f"    {label}: {sp.sstr(e)}")
    lines += ["", "Kernel steps per row (log-sum-exp with the row maximum m):"]
    for sym, op, e in spec.forward_reductions:
        lines.append(f"    {sym} = {op} over j of {sp.sstr(e)}")
    for sym, op, e in spec.grad_reductions:
        lines.append(f"    {sym} = {op} over j of {sp.sstr(e)}  (backward)")
    if spec.forward_value is not None:
        lines.append(f"    row loss = {sp.sstr(spec.forward_value)}")
    if spec.forward_output is not None:
        lines.append(f"    output_j = {sp.sstr(spec.forward_output)}")
    lines.append(f"    gradient_j = {sp.sstr(spec.grad_output)}")
    lines.append("Operations (one element of each pass + row temporaries): "
                 + ", ".join(f"{k} {v}" for k, v in ops.items()) + ".")
    data = {"name": spec.name, "kind": spec.kind, "shape": "rowwise", "doc": spec.doc, "hyper": [],
            "target_kind": spec.target_kind, "convention": "", "latex": {"definition": spec.textbook},
            "op_count": ops}
    ctx = {
        "header": header(f"nn {spec.kind} {spec.name}", "symopt.nn", ROWWISE_TEMPLATE, digest),
        "docstring": docstring_text("\n".join(lines)),
        "spec_literal": pprint.pformat(data, width=100, sort_dicts=False),
        "kernels": kernels,
    }
    return environment().get_template(ROWWISE_TEMPLATE).render(**ctx)


# ----------------------------------------------------------------------------- symopt.gradient
def gradient_hash(program) -> str:
    """The input hash of a :class:`~symopt.codegen.plan_gradients.TermProgram`'s module: its term shapes."""
    return input_hash(GRADIENT_TEMPLATE,
                      *[f"{sp.srepr(g.template)}|{len(g.inputs)}|{len(g.params)}" for g in program.groups])


def render_gradient(program) -> str:
    """Module text for a :class:`~symopt.codegen.plan_gradients.TermProgram`.

    The module depends only on the term shapes, never on the sizes or the numbers
    in the tables, so equal shapes share one compiled module.
    """
    digest = gradient_hash(program)
    groups, terms = [], []
    for gi, g in enumerate(program.groups):
        sweep = g.sweep
        names = {s: s.name for s in (*g.inputs, *g.params)}
        names.update({s: s.name for s, _ in sweep.forward})
        names.update({s: s.name for s, _ in sweep.reverse})
        pr = KernelPrinter(names, "float64")
        groups.append({
            "name": f"term{gi}",
            "doc": docstring_text(f"Terms of shape {gi}: {sp.sstr(g.template)}"),
            "input_loads": [(s.name, j) for j, s in enumerate(g.inputs)],
            "param_loads": [(s.name, j) for j, s in enumerate(g.params)],
            "forward": [(s.name, pr.doprint(e)) for s, e in sweep.forward],
            "value": pr.doprint(sweep.value),
            "reverse": [(s.name, pr.doprint(e)) for s, e in sweep.reverse],
            "grads": [(j, pr.doprint(e)) for j, e in enumerate(sweep.grads)],
        })
        terms.append({"template": sp.sstr(g.template), "inputs": len(g.inputs), "params": len(g.params),
                      "forward_ops": g.forward_ops, "reverse_ops": g.reverse_ops})
    lines = ["symopt.gradient: value and gradient by reverse-mode accumulation.", "",
             "f is a sum of terms; each term shape below is evaluated in a loop over a table of",
             "input positions (p0, p1, ...) and constants (c0, c1, ...). Per term:"]
    for gi, term in enumerate(terms):
        lines.append(f"    shape {gi}: {term['template']}  -- forward {term['forward_ops']} ops, "
                     f"reverse {term['reverse_ops']} ops")
    ctx = {
        "header": header("symopt.gradient expression", "user expression", GRADIENT_TEMPLATE, digest),
        "docstring": docstring_text("\n".join(lines)),
        "terms_literal": pprint.pformat(terms, width=100, sort_dicts=False),
        "groups": groups,
    }
    return environment().get_template(GRADIENT_TEMPLATE).render(**ctx)


# ----------------------------------------------------------------------------- index of generated/
def render_index(names_to_modules: list) -> str:
    """The ``RULES`` index of ``generated/``: ``(rule name, module name)`` pairs in catalog order."""
    digest = input_hash(INDEX_TEMPLATE, repr(names_to_modules))
    rules = [(string_literal(n), string_literal(m)) for n, m in names_to_modules]
    return environment().get_template(INDEX_TEMPLATE).render(
        header=header("index of built-in rules", "symopt.rulebook.catalog", INDEX_TEMPLATE, digest), rules=rules)


# ----------------------------------------------------------------------------- array backends
@dataclass(frozen=True)
class ArrayTarget:
    """A backend that runs an optimizer family as array-library code (one more kind of module for
    the one emitter): what differs between PyTorch and JAX is data, the template is shared.

    ``name`` names the backend (``symopt show --backend``), the folder of ``generated/`` and of
    the user cache; ``printer`` prints element code; ``imports`` are the module's import lines;
    ``cast`` puts a value (``{0}``) into the compute dtype ``dt``; ``reduce_sum`` sums an element
    expression over a tensor in the accumulation dtype (float64 as the Numba reduction passes,
    for JAX the dtype of the per-step scalars); ``numel`` counts a tensor's elements, ``count``
    as a 0-d array of the accumulation dtype (the sum of an element-free value ``c`` is
    ``count · c``);
    ``scalars``: the module prints the per-step scalar function itself (JAX computes it inside
    ``jax.jit`` from the traced step count; the torch backend calls the float64 function of the
    rule's Numba module, once per step on the host).
    """

    name: str
    printer: type
    imports: tuple
    cast: str
    reduce_sum: str
    numel: str
    count: str
    scalars: bool


def is_matrix_family(family: Family) -> bool:
    """True if a variant of ``family`` reads the param as a matrix: it iterates on it (:mod:`.plan_matrix`),
    keeps matrix states (:mod:`.plan_preconditioned`) or row and column statistics (:mod:`.plan_factored`)."""
    return any(is_matrix_rule(rule) or is_preconditioned_rule(rule) or is_factored_rule(rule)
               for _, rule in family.variants)


def is_factored_family(family: Family) -> bool:
    """True if a variant of ``family`` keeps row/column statistics (:mod:`.plan_factored`)."""
    return any(is_factored_rule(rule) for _, rule in family.variants)


def is_preconditioned_family(family: Family) -> bool:
    """True if a variant of ``family`` keeps matrix states (:mod:`.plan_preconditioned`)."""
    return any(is_preconditioned_rule(rule) for _, rule in family.variants)


ARRAY_TEMPLATE = "array_module.py.jinja"
TARGETS = {
    "torch": ArrayTarget("torch", TorchArrayPrinter, ("import torch",), "{0}.to(dt)",
                         "torch.sum({0}, dtype=torch.float64)", "{0}.numel()",
                         "torch.full((), {0}.numel(), dtype=torch.float64, device={0}.device)", scalars=False),
    "jax": ArrayTarget("jax", JaxArrayPrinter, ("import jax", "import jax.numpy as jnp", "from jax.scipy import special"),
                       "jnp.asarray({0}, dt)", "jnp.sum({0}, dtype=acc)", "{0}.size",
                       "jnp.asarray({0}.size, acc)", scalars=True),
}


def array_family_hash(family: Family, target: ArrayTarget) -> str:
    """The input hash of ``family``'s module for ``target``."""
    return input_hash(ARRAY_TEMPLATE, target.name, family.fingerprint())


def _array_sum(target: ArrayTarget, printer, e, arrays) -> str:
    """The sum of element expression ``e`` over tensor ``j``; a value free of arrays (a count) is
    multiplied by the number of elements instead."""
    if e.free_symbols & arrays:
        return target.reduce_sum.format(printer.doprint(e))
    count = target.count.format("params[j]")
    return count if e == 1 else f"{count} * {printer._paren(e)}"


def _array_reductions(plan, target: ArrayTarget, names: dict, src: dict) -> list:
    """Template context of the reduction passes, as whole-tensor sums (see ``_reduction_context``)."""
    info = plan.reduction
    arrays = set(src) | {sym for st in info.stages for sym, _ in st.element_temps}
    stages = []
    for st in info.stages:
        nm = dict(names)
        for sym, _ in st.element_temps:
            nm[sym] = sym.name
        pr = target.printer(nm)
        used = set()
        for e in [*st.element_exprs, *(x for _, x in st.element_temps)]:
            used |= e.free_symbols
        fin = {}
        fused = set()
        for _, e in [*st.tensor_temps, *st.tensor_outputs]:
            fused |= e.free_symbols
        values = []
        for k, r in enumerate(info.reductions):
            if r.sym not in fused:
                continue
            fin[r.sym] = f"_r{k}"
            if r.scope == "tensor":
                code = f"_a{k}[j]" + (" / " + target.numel.format("params[j]") if r.op == "mean" else "")
            else:
                code = f"_g{k}" + (" / _total" if r.op == "mean" else "")
            values.append((f"_r{k}", code))
        loads64 = []
        for i, s in enumerate(plan.scalars):
            if s in fused:
                fin[s] = f"_d{i}"
                loads64.append((f"_d{i}", i))
        for sym, _ in st.tensor_temps:
            fin[sym] = sym.name
        fp = target.printer(fin)
        col = {sym: k for k, sym in enumerate(info.tensor_scalars)}
        stages.append({
            "comment": comment_text(", ".join(f"r{k} ({info.reductions[k].scope} {info.reductions[k].op})"
                                              for k in st.reductions)),
            "loads": [(src[s][0], src[s][1]) for s in st.reads],
            "tensor_loads": [(names[s], f"_u{col[s]}") for s in info.tensor_scalars if s in used],
            "temps": [(nm[s], pr.doprint(e)) for s, e in st.element_temps],
            "sums": [(f"_a{k}", _array_sum(target, pr, e, arrays)) for k, e in zip(st.reductions, st.element_exprs)],
            "globals": [f"_g{k}" for k in st.reductions if info.reductions[k].scope == "global"],
            "red_values": values,
            "finalize_loads": loads64,
            "finalize_temps": [(fin[s], fp.doprint(e)) for s, e in st.tensor_temps],
            "finalize_stores": [(f"_u{col[s]}", fp.doprint(e)) for s, e in st.tensor_outputs],
        })
    return stages


def _array_variant(family: Family, rule: Rule, plan: KernelPlan, prefix: str, hyper_ids: dict,
                   target: ArrayTarget) -> dict:
    state_ids = _state_identifiers(rule)
    lists = {rule.param: "params", rule.grad: "grads", **{s: state_ids[s] for s in plan.state}}
    names = {rule.param: "param_i", rule.grad: "grad_i", **{s: f"{state_ids[s]}_i" for s in plan.state}}
    for i, s in enumerate(plan.scalars):
        names[s] = f"s{i}"
    if plan.reduction is not None:
        _name_tensor_scalars(plan, names)
    src = {s: (names[s], f"{lists[s]}[j]") for s in lists}
    elem = dict(names)
    for s, _ in plan.element_temps:
        elem[s] = s.name
    pr = target.printer(elem)
    updated = dict(plan.outputs)
    returns = [pr.doprint(updated[rule.param])]
    returns += [pr.doprint(updated[s]) if s in updated else f"{state_ids[s]}[j]" for s in plan.state]
    ctx = {
        "prefix": prefix,
        "comment_name": comment_text(rule.name),
        "op_count": plan.op_count,
        "nscalars": len(plan.scalars),
        "state_args": [state_ids[s] for s in plan.state],
        "state_keys": [rule.state_key(s) for s in plan.state],
        "scalar_loads": [(f"s{i}", i) for i in range(len(plan.scalars))],
        "loads": [src[s] for s in plan.reads],
        "tensor_loads": [],
        "temps": [(elem[s], pr.doprint(e)) for s, e in plan.element_temps],
        "returns": returns,
        "reductions": [],
        "ntensor": 0,
    }
    if plan.reduction is not None:
        info = plan.reduction
        ctx["ntensor"] = len(info.tensor_scalars)
        ctx["uses_total"] = any(r.scope == "global" and r.op == "mean" for r in info.reductions)
        ctx["tensor_loads"] = [(names[s], f"_u{k}") for k, s in enumerate(info.tensor_scalars)]
        ctx["reductions"] = _array_reductions(plan, target, names, src)
        ctx["reduction_doc"] = _reduction_doc(plan)
    ctx.update(_array_scalar_context(plan, hyper_ids, target))
    return ctx


def _array_scalar_context(plan, hyper_ids: dict, target: ArrayTarget) -> dict:
    """The per-step scalar function printed for ``target`` (JAX: traced), either planner's plan; its doc lines."""
    resolved = _resolved(plan.scalar_temps)
    ctx = {"scalar_doc": [docstring_text(f"s{i} = {sp.sstr(e.xreplace(resolved))}")
                          for i, e in enumerate(plan.scalar_exprs)]}
    if target.scalars:
        scalar_names = {t: "t", **{s: hyper_ids[s] for s in plan.hyper}}
        taken = set(scalar_names.values())
        for sym, _ in plan.scalar_temps:
            scalar_names[sym] = identifier(sym.name, taken, prefix="c")
        sp_printer = target.printer(scalar_names)
        ctx["scalar_args"] = ["t", *[hyper_ids[s] for s in plan.hyper]]
        ctx["scalar_temps"] = [(scalar_names[s], sp_printer.doprint(e)) for s, e in plan.scalar_temps]
        ctx["scalar_returns"] = [sp_printer.doprint(e) for e in plan.scalar_exprs]
    return ctx


def _array_docstring(family: Family, target: ArrayTarget) -> str:
    lines = [f"{family.name}: generated {target.name} step functions (the same plan as the Numba module).", ""]
    if family.doc:
        lines += [family.doc.strip(), ""]
    for when, rule in family.variants:
        cond = "" if when == sp.true else f"  (when {sp.sstr(when)})"
        lines.append(f"Variant {rule.name}{cond}, in order:")
        lines += [f"    {sp.sstr(lhs)} <- {sp.sstr(rhs)}" for lhs, rhs in rule.updates]
        lines.append("")
    return docstring_text("\n".join(lines).rstrip())


def render_array_family(family: Family, target: ArrayTarget, *, source_label: str | None = None) -> str:
    """Source text of ``family``'s module for an array backend (``TARGETS["torch"]``, ``["jax"]``): the
    plan of its kind (:func:`array_plan_kind`) printed through that kind's template (``_ARRAY_KINDS``)."""
    template, make, variant, forms = _ARRAY_KINDS[array_plan_kind(family)]
    plans = [make(rule) for _, rule in family.variants]
    hyper_ids = hyper_identifiers(family)
    prefixes = _variant_prefixes(family)
    ctx = {
        "header": header(family.name, source_label or family.source, template, array_family_hash(family, target)),
        "target": target, "forms": forms[target.name] if forms else None,
        "docstring": _array_docstring(family, target),
        "backend_literal": string_literal(target.name),
        "family_literal": string_literal(family.name),
        "formula_hash_literal": string_literal(family.fingerprint()),
        "variants": [variant(family, r, p, pre, hyper_ids, target)
                     for (_, r), p, pre in zip(family.variants, plans, prefixes)],
    }
    return environment().get_template(template).render(**ctx)


# ----------------------------------------------------------------------------- array backends: matrix rules
ARRAY_MATRIX_TEMPLATE = "array_matrix_module.py.jinja"
#: What the matrix template needs of each array target beyond :class:`ArrayTarget`: ``shape``
#: makes a 0-d array of the accumulation dtype from a Python int (``rows``, ``cols`` in
#: per-tensor scalars); ``count_arg``: the step takes the iteration count as a Python int (torch:
#: from the host's per-step scalars, a ``for`` loop that ``torch.compile`` unrolls); else the count
#: is read from the traced scalars (``int_count``) and the iteration is a ``lax.fori_loop``; ``imports``:
#: the module's import lines beyond the target's.
ARRAY_MATRIX_FORMS = {
    "torch": {"shape": "scal.new_full((), {0})", "count_arg": True, "int_count": None, "imports": ()},
    "jax": {"shape": "jnp.asarray({0}, acc)", "count_arg": False, "int_count": "jnp.asarray({0}, jnp.int32)",
            "imports": ("from jax import lax",)},
}


def array_plan_kind(family: Family) -> str:
    """``"elementwise"`` (:func:`~.plan.make_plan`, ``array_module.py.jinja``), ``"iterate"``
    (:func:`~.plan_matrix.make_matrix_plan`, ``array_matrix_module.py.jinja``), ``"factored"``
    (:func:`~.plan_factored.make_factored_plan`, ``array_factored_module.py.jinja``) or
    ``"preconditioned"`` (:func:`~.plan_preconditioned.make_preconditioned_plan` of rules that
    precondition every axis, ``array_preconditioned_module.py.jinja``); a RuleError naming the rule
    for a preconditioned rule that reads its param as one matrix (``every_axis=False``: Numba only)."""
    if not is_matrix_family(family):
        return "elementwise"
    if is_factored_family(family):
        return "factored"
    if is_preconditioned_family(family):
        other = [rule.name for _, rule in family.variants
                 if not (is_preconditioned_rule(rule) and make_preconditioned_plan(rule).every_axis)]
        if other:
            raise RuleError(f"{family.name}: variants {', '.join(other)} are preconditioned rules that read the param "
                            f"as one matrix (every_axis=False), which have no torch or JAX template; they step "
                            f"through their Numba kernels (backend='numba')")
        return "preconditioned"
    return "iterate"


def has_array_module(family: Family) -> bool:
    """Whether ``family`` has torch and JAX modules (see :func:`array_plan_kind`)."""
    try:
        array_plan_kind(family)
    except RuleError:
        return False
    return True


def _array_matrix_variant(rule: Rule, plan, prefix: str, hyper_ids: dict, target: ArrayTarget) -> dict:
    """Printed code of one matrix variant for ``target``: pass 0 as whole-tensor ops, the reductions and
    per-tensor scalars (accumulation dtype), the iteration as matrix products, pass 1 (see
    :mod:`.plan_matrix`)."""
    forms = ARRAY_MATRIX_FORMS[target.name]
    state_ids = _state_identifiers(rule)
    ns = len(plan.scalars)
    elem = _matrix_element_names(rule, plan, state_ids)
    pr = target.printer(elem)
    lists = {rule.param: "params", rule.grad: "grads", **{s: state_ids[s] for s in plan.state}}
    arrays = set(lists) | {RESULT, WORK} | {sym for ps in plan.passes for sym, _ in ps.element_temps}
    pass0, pass1 = plan.passes
    reduction_names = [f"_r{k}" for k in range(len(plan.reductions))]
    sums = [(name, _array_sum(target, pr, e, arrays)
             + (" / " + target.numel.format("params[j]") if op == "mean" else ""))
            for name, (_, op), (_, e) in zip(reduction_names, plan.reductions, pass0.sums)]
    tnames = {**{sym: f"scal[{k}]" for k, sym in enumerate(plan.scalars)},
              **{sym: name for (sym, _), name in zip(plan.reductions, reduction_names)},
              rows: "_rows", cols: "_cols"}
    tp = target.printer(tnames)
    it = plan.iteration

    def scalar(x):
        return elem[x] if x in elem else repr(float(x))

    if it.count.is_Number:
        count_host, count_traced = str(int(it.count)), str(int(it.count))
    else:
        col = plan.scalars.index(it.count)
        count_host = f"int(s[{col}])"
        count_traced = forms["int_count"].format(f"scal[{col}]") if forms["int_count"] else None
    q = [scalar(x) for x in it.coefficients]
    # Σ_{k≥1} q_k A^k by Horner from the top: H = q_d A, then H ← q_k A + H·A for k = d−1 … 1.
    horner = [f"_h = {q[-1]} * _a"] + [f"_h = {q[k]} * _a + _h @ _a" for k in range(len(q) - 2, 0, -1)]
    tensor_used = set()
    for _, e in plan.tensor_scalars:
        tensor_used |= e.free_symbols
    ctx = {
        "prefix": prefix, "comment_name": comment_text(rule.name), "op_count": plan.op_count,
        "nscalars": ns, "state_args": [state_ids[s] for s in plan.state],
        "state_keys": [rule.state_key(s) for s in plan.state],
        "scalar_loads": [(f"s{k}", k) for k in range(ns)],
        "loads": [(elem[s], f"{lists[s]}[j]") for s in lists if s in {*pass0.reads, *pass1.reads}],
        "temps0": [(elem[s], pr.doprint(e)) for s, e in pass0.element_temps],
        "stores0": [(elem[tgt], pr.doprint(e)) for tgt, e in pass0.stores if tgt is not WORK],
        "work": next(pr.doprint(e) for tgt, e in pass0.stores if tgt is WORK),
        "sums": sums,
        "uses_rows": rows in tensor_used, "uses_cols": cols in tensor_used,
        "rows_code": forms["shape"].format("rows"), "cols_code": forms["shape"].format("cols"),
        "tensor_codes": [(f"s{ns + k}", target.cast.format(f"({tp.doprint(e)})"))
                         for k, (_, e) in enumerate(plan.tensor_scalars)],
        "tensor_doc": [docstring_text(f"s{ns + k} = {sp.sstr(e)}") for k, (_, e) in enumerate(plan.tensor_scalars)],
        "scale": scalar(it.scale), "count_host": count_host, "count_traced": count_traced,
        "count_doc": sp.sstr(it.count), "coefficients": q, "q0": q[0], "horner": horner,
        "temps1": [(elem[s], pr.doprint(e)) for s, e in pass1.element_temps],
        "returns": [pr.doprint(dict(pass1.stores).get(s, s)) for s in (rule.param, *plan.state)],
    }
    ctx.update(_array_scalar_context(plan, hyper_ids, target))
    return ctx


# ----------------------------------------------------------------------------- array backends: factored rules
ARRAY_FACTORED_TEMPLATE = "array_factored_module.py.jinja"
#: What the factored template needs of each array target beyond :class:`ArrayTarget`: ``axis_sum``
#: sums an element expression (``{0}``) along one axis (``{1}``: -1 for a row's mean over the columns,
#: -2 for a column's over the rows), kept as an axis of length 1, in the accumulation dtype; ``shape``
#: makes a 0-d array of the accumulation dtype from a Python float (the machine epsilon of a param's dtype);
#: ``move`` moves the axes ``{1}`` of ``{0}`` to the places ``{2}`` (a view: a matrix's row and column
#: axes to the last two and back).
ARRAY_FACTORED_FORMS = {
    "torch": {"axis_sum": "torch.sum({0}, dim={1}, keepdim=True, dtype=torch.float64)",
              "shape": "scal.new_full((), {0})", "move": "torch.movedim({0}, {1}, {2})"},
    "jax": {"axis_sum": "jnp.sum({0}, axis={1}, keepdims=True, dtype=acc)", "shape": "jnp.asarray({0}, acc)",
            "move": "jnp.moveaxis({0}, {1}, {2})"},
}


def _array_factored_layout(rule: Rule, plan, lay, state_ids: dict, target: ArrayTarget) -> dict:
    """Printed code of one layout (``matrix``/``vector``) of a factored variant as whole-tensor
    statements, in the order of the Numba kernel (:func:`_factored_layout_context`): each pass's
    temporaries and reductions, then the stage after it (per-tensor scalars, row and column states,
    per-matrix means), then the final pass.  A matrix tensor's row and column axes (``axes[j]``) are
    moved last on loading and back on returning (views); row values then have the shape ``(…, nr, 1)``,
    column values ``(…, 1, nc)``, per-matrix values ``(…, 1, 1)``: broadcasting does what the Numba
    loops index."""
    forms = ARRAY_FACTORED_FORMS[target.name]
    names = {rule.param: "param_i", rule.grad: "grad_i", machine_eps: "_meps"}
    names.update({s: f"{state_ids[s]}_i" for s in lay.states})
    names.update({sym: f"s{k}" for k, sym in enumerate(plan.scalars)})
    tensor_syms = [sym for st in lay.stages for sym, _ in st.tensor_scalars]
    names.update({sym: f"_k{k}" for k, sym in enumerate(tensor_syms)})
    for sym in lay.kinds:
        if sym not in names:
            names[sym] = f"_{sym.name}"  # reductions r<k>, per-matrix means m<k>
    for loop in lay.loops:
        names.update({sym: sym.name for sym, _ in loop.temps})
    # per-tensor scalars: float64 (JAX: the accumulation dtype) from the float64 per-step scalars
    tnames = {**{sym: f"scal[{k}]" for k, sym in enumerate(plan.scalars)},
              **{sym: f"_t{k}" for k, sym in enumerate(tensor_syms)},
              **{sym: names[sym] for sym, kind in lay.kinds.items() if kind == "tensor"}, machine_eps: "_meps"}
    pr, tp = target.printer(names), target.printer(tnames)
    arrays = {sym for sym, kind in lay.kinds.items() if kind != "tensor"} | {sym for lp in lay.loops for sym, _ in lp.temps}

    def mean_along(code: str, axis: int) -> str:
        return target.cast.format(f"({forms['axis_sum'].format(code, axis)} / {'nc' if axis == -1 else 'nr'})")

    blocks = []
    for k, st in enumerate(lay.stages):
        if k:
            loop = lay.loops[k - 1]
            lines = [(names[sym], pr.doprint(e)) for sym, e in loop.temps]
            for sym, scope, op, e in loop.sums:
                if scope == "tensor":
                    code = _array_sum(target, pr, e, arrays) + (" / max(n, 1)" if op == "mean" else "")
                else:  # a row's mean over the columns (RowMean), a column's over the rows (ColMean)
                    code = mean_along(pr.doprint(e), -1 if scope == "row" else -2)
                lines.append((names[sym], code))
            blocks.append((f"pass {k}: the reductions", lines))
        first = sum(len(x.tensor_scalars) for x in lay.stages[:k])
        lines = []
        for i, (_, e) in enumerate(st.tensor_scalars):
            lines += [(f"_t{first + i}", tp.doprint(e)), (f"_k{first + i}", target.cast.format(f"_t{first + i}"))]
        lines += [(names[s], pr.doprint(e)) for s, e in (*st.row_stores, *st.col_stores)]
        # a mean over the rows of a row value (over the columns of a column value): one number per matrix
        lines += [(names[sym], mean_along(pr.doprint(e), -2 if scope == "row" else -1)) for sym, scope, e in st.means]
        if lines:
            blocks.append(("per-tensor scalars, row and column states, per-matrix means", lines))
    final = lay.loops[-1]
    outputs = {s: f"_o{k}" for k, (s, _) in enumerate(final.stores)}
    lines = [(names[sym], pr.doprint(e)) for sym, e in final.temps]
    lines += [(outputs[s], pr.doprint(e)) for s, e in final.stores]
    blocks.append(("final pass: the param and its full-shape states", lines))
    kept = set(lay.states)
    matrix = lay.name == "matrix"
    move_in = (lambda code: forms["move"].format(code, "ax", "(-2, -1)")) if matrix else (lambda code: code)
    move_out = (lambda code: forms["move"].format(code, "(-2, -1)", "ax")) if matrix else (lambda code: code)
    returns = [move_out(outputs[s]) if s in outputs else move_out(names[s]) if s in kept else f"{state_ids[s]}[j]"
               for s in (rule.param, *plan.state)]
    # the layouts are planned in the order of LAYOUTS ("matrix" first): an if/else on each tensor's layout
    return {"name": lay.name, "matrix": matrix,
            "branch": 'if layouts[j] == "matrix":' if matrix else "else:",
            "moved": [(names[s], move_in(names[s])) for s in (rule.param, rule.grad)] if matrix else [],
            "loads": [(names[s], move_in(f"{state_ids[s]}[j]")) for s in lay.states],
            "blocks": blocks, "returns": returns,
            "tensor_doc": [docstring_text(f"{sym.name} = {sp.sstr(e)}") for st in lay.stages
                           for sym, e in st.tensor_scalars] or ["(none)"]}


def _array_factored_variant(rule: Rule, plan, prefix: str, hyper_ids: dict, target: ArrayTarget) -> dict:
    state_ids = _state_identifiers(rule)
    ns = len(plan.scalars)
    ctx = {
        "prefix": prefix, "comment_name": comment_text(rule.name), "op_count": plan.op_count,
        "nscalars": ns, "state_args": [state_ids[s] for s in plan.state],
        "state_keys": [rule.state_key(s) for s in plan.state],
        "scalar_loads": [(f"s{k}", k) for k in range(ns)],
        "uses_meps": any(rhs.has(machine_eps) for _, rhs in rule.updates),
        "meps_code": ARRAY_FACTORED_FORMS[target.name]["shape"].format("meps[j]"),
        "layouts": [_array_factored_layout(rule, plan, lay, state_ids, target) for lay in plan.layouts],
    }
    ctx.update(_array_scalar_context(plan, hyper_ids, target))
    return ctx


# ----------------------------------------------------------------------------- array backends: preconditioned rules
ARRAY_PRECONDITIONED_TEMPLATE = "array_preconditioned_module.py.jinja"
#: What the preconditioned template needs of each array target beyond :class:`ArrayTarget`: ``when``,
#: the expression of ``_when(flag, run, keep, operand)`` (torch: the flags are Python bools from the host's
#: per-step scalars, so an eager step runs only the decompositions it needs and a compiled one
#: specializes on them; JAX: ``lax.cond`` on the traced flag, one branch runs); the array library's
#: axis moves, mode product (``tensordot``), ``flip`` of the columns, a column sum, stable ``argsort``,
#: ``take`` along an axis, the root mean square ``rms`` (``{0}``, accumulated in ``acc``) and
#: ``cast_like``; ``acc``: the accumulation dtype at the call; ``imports``: beyond the target's, the
#: library's ``linalg`` (``eigh``, ``qr``, in the compute dtype).
ARRAY_PRECONDITIONED_FORMS = {
    "torch": {"when": "run(operand) if flag else keep(operand)",
              "when_doc": "run(operand) where flag (a Python bool: a compiled step specializes on it) holds, "
                          "else keep(operand).",
              "movefront": "torch.movedim({0}, {1}, 0)", "moveback": "torch.movedim({0}, 0, {1})",
              "tensordot": "torch.tensordot({0}, {1}, dims=([1], [{2}]))", "flip": "torch.flip({0}, (-1,))",
              "signed": "torch.where({0} < 0, -{1}, {1})",
              "colsum": "torch.sum({0}, 0)", "argsort": "torch.argsort(-{0}, stable=True)",
              "take": "torch.index_select({0}, {2}, {1})",
              "rms": "torch.sqrt(torch.mean(torch.square({0}), dtype=acc))", "cast_like": "{0}.to({1}.dtype)",
              "acc": "torch.float64", "acc_doc": "float64", "imports": ("from torch import linalg",)},
    "jax": {"when": "lax.cond(flag, run, keep, operand)",
            "when_doc": "run(operand) where the traced flag holds, else keep(operand): lax.cond, one branch "
                        "runs (under jit and scan alike).",
            "movefront": "jnp.moveaxis({0}, {1}, 0)", "moveback": "jnp.moveaxis({0}, 0, {1})",
            "tensordot": "jnp.tensordot({0}, {1}, axes=([1], [{2}]))", "flip": "{0}[:, ::-1]",
            "signed": "jnp.where({0} < 0, -{1}, {1})",
            "colsum": "jnp.sum({0}, 0)", "argsort": "jnp.argsort(-{0}, stable=True)",
            "take": "jnp.take({0}, {1}, axis={2})",
            "rms": "jnp.sqrt(jnp.mean(jnp.square({0}), dtype=acc))", "cast_like": "jnp.asarray({0}, {1}.dtype)",
            "acc": "acc", "acc_doc": "float64 with jax_enable_x64, else float32",
            "imports": ("from jax import lax", "from jax.numpy import linalg")},
}


def _array_preconditioned_variant(rule: Rule, plan, prefix: str, hyper_ids: dict, target: ArrayTarget) -> dict:
    """Printed code of one preconditioned variant (every axis) for ``target``: each element pass as
    whole-tensor statements (its stores computed first, then assigned, as the Numba loop reads the
    old values), then its stage: the matrix operations per kept axis, each under its flag
    (``_when``), and the node's mode product (see :mod:`.plan_preconditioned`)."""
    forms = ARRAY_PRECONDITIONED_FORMS[target.name]
    state_ids = _state_identifiers(rule)
    ns = len(plan.scalars)
    elem = {rule.param: "param_i", rule.grad: "grad_i", **{s: f"{state_ids[s]}_i" for s in plan.state},
            **{b: b.name for b in plan.buffers}, **{sym: f"s{k}" for k, sym in enumerate(plan.scalars)}}
    for ps in plan.passes:
        elem.update({sym: sym.name for sym, _ in ps.element_temps})  # _v<k>, _w<k>: the planner's names
    pr = target.printer(elem)
    mats = [f"_m{j}" for j in range(len(plan.matrix_states))]
    flag_columns: list = []

    def scalar(x):
        return elem[x] if x in elem else repr(float(x))

    def flag(x):
        """A flag's name (``_f<i>``, read from its per-step scalar) or a constant."""
        if x not in plan.scalars:
            return repr(float(x) != 0.0)
        col = plan.scalars.index(x)
        if col not in flag_columns:
            flag_columns.append(col)
        return f"_f{flag_columns.index(col)}"

    passes = []
    for index, (ps, stage) in enumerate(zip(plan.passes, plan.stages)):
        lines = [(elem[s], pr.doprint(e)) for s, e in ps.element_temps]
        outs = [(f"_o{k}", pr.doprint(e)) for k, (_, e) in enumerate(ps.stores)]
        lines += outs + [(elem[tgt], name) for (tgt, _), (name, _) in zip(ps.stores, outs)]
        ops: list = []

        def under(x, target, operand, body):
            """Lines that set ``target`` to ``body`` (of ``operand``), under flag ``x`` (None: always)."""
            if x is None:
                return [f"{target} = {body.replace('operand', operand)}"]
            name = f"_run{len(ops)}"
            return [f"def {name}(operand):", f"    return {body}", f"{target} = _when({flag(x)}, {name}, _same, "
                                                                        f"{operand})"]
        for op in stage.ops:
            m, src = mats[op.target], mats[op.source]
            if op.kind == "gram":
                alpha, beta = (scalar(c) for c in op.coefficients)
                ops += under(op.when, m, m, f"_grams(operand, work{op.source}, shape, {alpha}, {beta})")
            elif op.kind == "inverse_root":   # the order c · n_axes^e
                c, e = op.coefficients
                root = scalar(c) + (" * len(shape)" if e else "")
                ops += under(op.when, m, m, f"_inverse_roots({src}, {root})")
            else:   # eigenbasis: the basis and the elementwise state it reorders
                x = elem[op.reorder]
                ops += under(op.when, f"{m}, {x}", f"({m}, {x})",
                             f"_eigenbases(operand[0], {src}, operand[1], shape, {flag(op.coefficients[0])})")
        pr_ = stage.product
        if pr_ is not None:
            ops.append(f"result{index} = _mode_product(work{index}, {mats[pr_.left]}, {pr_.left_transposed}, shape)")
            if pr_.normalize is not None:
                eps, on = pr_.normalize
                if on in plan.scalars or float(on) != 0.0:
                    ops += under(on if on in plan.scalars else None, f"result{index}", f"result{index}",
                                 f"_rms_normalize(operand, {scalar(eps)}, {forms['acc']})")
        last = index == len(plan.passes) - 1
        passes.append({
            "index": index, "lines": lines, "stage": ops,
            "doc": comment_text(("the updates before the first preconditioned value" if index == 0 else
                                 f"the updates from preconditioned value {index - 1} on")
                                + ("" if last else f", the start value of preconditioned value {index} into "
                                                   f"work{index}")),
            "stage_doc": comment_text("the matrix states" + ("" if last else f", preconditioned value {index} "
                                                                             f"into result{index}")),
        })
    ctx = {
        "prefix": prefix, "comment_name": comment_text(rule.name), "op_count": plan.op_count,
        "nscalars": ns, "npasses": len(plan.passes), "state_args": [state_ids[s] for s in plan.state],
        "state_keys": [rule.state_key(s) for s in plan.state], "matrix_keys": [k for k, _, _ in plan.matrix_states],
        "scalar_loads": [(f"s{k}", k) for k in range(ns)], "mat_names": mats, "passes": passes,
        "flag_columns": flag_columns,
        "flags_doc": ", ".join(f"_f{i} = s{c} != 0" for i, c in enumerate(flag_columns)) or "none",
        "flag_loads": [(f"_f{i}", f"flags[{i}]" if not target.scalars else f"scal[{c}] != 0")
                       for i, c in enumerate(flag_columns)],
    }
    ctx.update(_array_scalar_context(plan, hyper_ids, target))
    return ctx


#: Each array plan kind: (template, plan maker, variant context, the target forms the template reads).
_ARRAY_KINDS = {
    "elementwise": (ARRAY_TEMPLATE, make_plan, _array_variant, None),
    "iterate": (ARRAY_MATRIX_TEMPLATE, make_matrix_plan,
                lambda family, *args: _array_matrix_variant(*args), ARRAY_MATRIX_FORMS),
    "factored": (ARRAY_FACTORED_TEMPLATE, make_factored_plan,
                 lambda family, *args: _array_factored_variant(*args), None),
    "preconditioned": (ARRAY_PRECONDITIONED_TEMPLATE, make_preconditioned_plan,
                       lambda family, *args: _array_preconditioned_variant(*args), ARRAY_PRECONDITIONED_FORMS),
}
