"""The rendering stage: plans + printers + Jinja2 templates -> module source text.

This module owns the Jinja2 environment (``StrictUndefined``, ``trim_blocks``,
``lstrip_blocks``) and builds the template context.  Templates receive only
printed strings and plain data; every decision (names, printing, ordering) is
made here, in Python.
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources

import jinja2
import sympy as sp

from .._version import __version__
from ..rulebook.display import expr_latex
from ..rulebook.metadata import t
from ..rulebook.rule import Family, Rule
from .names import comment_text, docstring_text, identifier, python_literal, string_literal
from . import reduce_render
from .plan import KernelPlan, make_plan
from .printer import KernelPrinter, ScalarPrinter

OPTIMIZER_TEMPLATE = "optimizer_module.py.jinja"
_DTYPES = (("f32", "float32", "_ptr_f32", 4), ("f64", "float64", "_ptr_f64", 8))


def template_dir():
    return resources.files("symopt.templates")


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _load_template(name: str):
    path = template_dir().joinpath(name)
    return path.read_text(encoding="utf-8")


def template_text(name: str) -> str:
    return _load_template(name)


def input_hash(family: Family, template: str = OPTIMIZER_TEMPLATE) -> str:
    """sha256 over the family's formulas, the templates used and the symopt version (and, for rules with
    reductions, the reduction planner's revision)."""
    h = hashlib.sha256()
    h.update(family.fingerprint().encode())
    for name in (template, "_util.jinja", "_vecmath.jinja"):
        h.update(template_text(name).encode())
    if reduce_render.family_has_reductions(family):  # only such modules contain the reduction kernels
        from .reduce_plan import PLAN_REVISION

        h.update(template_text(reduce_render.REDUCE_TEMPLATE).encode())
        h.update(f"reduction plan revision {PLAN_REVISION}".encode())
    h.update(__version__.encode())
    return h.hexdigest()


def _num(x):
    if isinstance(x, bool):
        return x
    x = float(x)
    return None if math.isinf(x) else x


def hyper_identifiers(family: Family) -> dict:
    """Symbol -> identifier for every hyperparameter and option of the family."""
    taken: set = set()
    return {sym: identifier(sym.name, taken, prefix="h") for sym in family.hyper}


def _state_identifiers(rule: Rule) -> dict:
    taken: set = {"param", "grad"}
    # The kernel also uses ``<id>_i`` (element value) and ``<id>_c`` (chunk view): keep those free too.
    return {sym: identifier(rule.state_key(sym), taken, prefix="state", suffixes=("_i", "_c")) for sym in rule.state}


def family_data(family: Family, plans: list, hyper_ids: dict, prefixes: list) -> dict:
    """The plain-data description of a family that the runtime reads (no SymPy)."""
    hyper = []
    for sym, h in family.hyper.items():
        hyper.append({
            "name": hyper_ids[sym], "key": h.key or sym.name, "index": h.index,
            "default": h.default, "kind": h.kind, "low": _num(h.low), "high": _num(h.high),
            "low_open": h.low_open, "high_open": h.high_open, "doc": h.doc,
        })
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
        if plan.reduction is not None:  # reduction passes + per-tensor scalars (reduce_render.py)
            variants[-1]["reduce"] = reduce_render.runtime_info(plan, prefix)
    return {
        "name": family.name,
        "group": family.group,
        "source": family.source,
        "doc": family.doc,
        "references": list(family.references),
        "hyper": hyper,
        "variants": variants,
        "formula_hash": family.fingerprint(),
    }


def _init_hypers(rule: Rule) -> list:
    syms: set = set()
    for spec in rule.state.values():
        init = sp.sympify(spec.init)
        if init != rule.param:
            syms |= init.free_symbols
    return [s for s in rule.hyper if s in syms]


def _variant_context(family: Family, rule: Rule, plan: KernelPlan, prefix: str, hyper_ids: dict) -> dict:
    state_ids = _state_identifiers(rule)
    # Scalar function: arguments t and the hyperparameters, then CSE temporaries.
    scalar_names = {t: "t", **{s: hyper_ids[s] for s in plan.hyper}}
    taken = set(scalar_names.values())
    for sym, _ in plan.scalar_temps:
        scalar_names[sym] = identifier(sym.name, taken, prefix="c")
    sp_printer = ScalarPrinter(scalar_names)
    scalar_temps = [(scalar_names[s], sp_printer.doprint(e)) for s, e in plan.scalar_temps]
    scalar_returns = [sp_printer.doprint(e) for e in plan.scalar_exprs]
    resolved: dict = {}
    for sym, expr in plan.scalar_temps:
        resolved[sym] = expr.xreplace(resolved)
    scalar_doc = [docstring_text(f"s{i} = {sp.sstr(e.xreplace(resolved))}") for i, e in enumerate(plan.scalar_exprs)]

    # State initial values.
    init_ids = {s: hyper_ids[s] for s in _init_hypers(rule)}
    init_printer = ScalarPrinter(init_ids)
    state_inits = []
    for s in plan.state:
        init = sp.sympify(rule.state[s].init)
        state_inits.append(string_literal("param") if init == rule.param else init_printer.doprint(sp.Float(0) + init))

    # Element loop: names for loads, scalars and temporaries.
    elem_names = {rule.param: "param_i", rule.grad: "grad_i"}
    for s in plan.state:
        elem_names[s] = f"{state_ids[s]}_i"
    for i, s in enumerate(plan.scalars):
        elem_names[s] = f"s{i}"
    nloads = len(plan.scalars)
    if plan.reduction is not None:  # per-tensor scalars: extra columns of the scalar table
        nloads += reduce_render.name_tensor_scalars(plan, elem_names)
    for s, _ in plan.element_temps:
        elem_names[s] = s.name  # _e0, _e1 ... (numbered_symbols, never user text)
    src = {rule.param: "param_c", rule.grad: "grad_c", **{s: f"{state_ids[s]}_c" for s in plan.state}}
    loads = [(elem_names[s], src[s]) for s in plan.reads]
    kernels = []
    helpers: set = set()  # vectorizable math helpers the kernels call (templates/_vecmath.jinja)
    for suffix, dtype, ptr, itemsize in _DTYPES:
        pr = KernelPrinter(elem_names, dtype, vector_math=True)
        temps = [(elem_names[s], pr.doprint(e)) for s, e in plan.element_temps]
        stores = [(src[tgt], pr.doprint(e)) for tgt, e in plan.outputs]
        helpers |= pr.helpers
        for parallel in (False, True):
            name = f"{prefix}_{suffix}" + ("_parallel" if parallel else "")
            kernels.append({
                "name": name, "dtype": dtype, "ptr": ptr, "itemsize": itemsize, "parallel": parallel,
                "range": "numba.prange" if parallel else "range",
                "ctor": pr.ctor, "zero": pr.const(0),
                "scalar_loads": [(f"s{i}", i) for i in range(nloads)],
                "temps": temps, "stores": stores,
                "doc": docstring_text(f"One {rule.name} step over every tensor, {dtype}"
                                      + (", chunks in parallel threads." if parallel else ", serial.")),
            })
    return {
        "prefix": prefix,
        "comment_name": comment_text(rule.name),
        "op_count": plan.op_count,
        "nscalars": len(plan.scalars),
        "scalar_args": ["t", *[hyper_ids[s] for s in plan.hyper]],
        "scalar_doc": scalar_doc,
        "scalar_temps": scalar_temps,
        "scalar_returns": scalar_returns,
        "init_args": [init_ids[s] for s in _init_hypers(rule)],
        "state_inits": state_inits,
        "state_args": [state_ids[s] for s in plan.state],
        "loads": loads,
        "kernels": kernels,
        "helpers": helpers,
    }


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
            f"{(h.key or s.name) + ('' if h.index is None else f'[{h.index}]')}={h.default!r} in {h.range_text()}"
            for s, h in rule.hyper.items()) if rule.hyper else "    hyperparameters: none")
        if rule.state:
            lines.append("    state: " + ", ".join(
                f"{rule.state_key(s)} (init {expr_latex(rule, sp.sympify(spec.init))})" for s, spec in rule.state.items()))
        lines.append("")
    if family.references:
        lines.append("References: " + "; ".join(family.references))
    return docstring_text("\n".join(lines).rstrip())


def variant_prefixes(family: Family) -> list:
    taken: set = set()
    return [identifier(rule.name.replace(".", "_"), taken, prefix="rule") for _, rule in family.variants]


def render_family(family: Family, *, source_label: str | None = None) -> str:
    """Source text of the generated module for ``family``."""
    plans = [make_plan(rule) for _, rule in family.variants]
    hyper_ids = hyper_identifiers(family)
    prefixes = variant_prefixes(family)
    data = family_data(family, plans, hyper_ids, prefixes)
    cond_printer = ScalarPrinter({s: f"h[{hyper_ids[s]!r}]" for s in family.hyper})
    digest = input_hash(family)
    ctx = {
        "header": {
            "version": __version__,
            "rule": comment_text(family.name),
            "source": comment_text(source_label or family.source),
            "template": OPTIMIZER_TEMPLATE,
            "input_hash": digest,
            "version_literal": string_literal(__version__),
            "input_hash_literal": string_literal(digest),
            "template_literal": string_literal(OPTIMIZER_TEMPLATE),
        },
        "docstring": _docstring(family),
        "family_literal": python_literal(data, width=100),
        "variant_conditions": [cond_printer.doprint(w) for w, _ in family.variants],
        "constraint_checks": [(cond_printer.doprint(c), string_literal(m)) for c, m in family.constraints],
        "variants": [_variant_context(family, r, p, pre, hyper_ids)
                     for (_, r), p, pre in zip(family.variants, plans, prefixes)],
    }
    ctx["vector_math"] = sorted(set().union(*(v["helpers"] for v in ctx["variants"])))
    env = environment()
    text = env.get_template(OPTIMIZER_TEMPLATE).render(**ctx)
    return text + reduce_render.render_reductions(env, family, plans, prefixes, _state_identifiers)
