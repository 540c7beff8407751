"""Rendering for ``symopt.nn`` and ``symopt.gradient``: plans + printer + templates -> module text.

Same habits as :mod:`symopt.codegen.render`: the templates receive printed
strings and plain data only; every name is generated here (element symbols,
CSE temporaries ``_e0…``, row temporaries ``r0…``, sweep temporaries ``v0…``/``a0…``)
or passed through :func:`~symopt.codegen.names.identifier`.

Three templates:

* ``elementwise_module.py.jinja`` -- one module per elementwise loss
  (``value``, ``value_and_grad``) or activation (``forward``, ``backward``), a
  float32 and a float64 kernel each;
* ``rowwise_module.py.jinja`` -- softmax and softmax cross-entropy, with row
  reductions (max, sum) before the element loop;
* ``gradient_module.py.jinja`` -- a user expression's value and gradient
  (:func:`symopt.gradient`), one loop per term shape.
"""

from __future__ import annotations

import hashlib
import pprint

import sympy as sp

from .._version import __version__
from .names import comment_text, docstring_text, identifier, string_literal
from .printers import KernelPrinter
from .render import environment, template_text

ELEMENTWISE_TEMPLATE = "elementwise_module.py.jinja"
ROWWISE_TEMPLATE = "rowwise_module.py.jinja"
GRADIENT_TEMPLATE = "gradient_module.py.jinja"
_DTYPES = (("f32", "float32"), ("f64", "float64"))
_KERNEL_NAMES = {"z", "target", "labels", "out", "scale_in", "scale", "x", "y", "g", "total", "i", "j", "r",
                 "lab", "index", "consts", "k", "grad", "need_grad"}


def nn_module_name(kind: str, name: str) -> str:
    """``nn_loss_<name>`` or ``nn_act_<name>`` (never collides with an optimizer rule module)."""
    return f"nn_{'loss' if kind == 'loss' else 'act'}_{name}"


def _hash(parts, template: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    for name in (template, "_util.jinja", "_vecmath.jinja"):
        h.update(template_text(name).encode("utf-8"))
    h.update(__version__.encode())
    return h.hexdigest()


def _header(label: str, source: str, template: str, digest: str) -> dict:
    return {
        "version": __version__, "rule": comment_text(label), "source": comment_text(source),
        "template": template, "input_hash": digest, "version_literal": string_literal(__version__),
        "input_hash_literal": string_literal(digest), "template_literal": string_literal(template),
    }


def _num(x):
    x = float(x)
    return None if x in (float("inf"), float("-inf")) else x


def _hyper_data(spec, ids: dict) -> list:
    return [{"name": ids[s], "key": h.key or s.name, "default": h.default, "low": _num(h.low), "high": _num(h.high),
             "low_open": h.low_open, "high_open": h.high_open, "doc": h.doc} for s, h in spec.hyper.items()]


def _hyper_ids(spec) -> dict:
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
    from ..derive.elementwise import SCALE, UPSTREAM

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
    for suffix, dtype in _DTYPES:
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


def render_elementwise(plan) -> tuple:
    """``(module text, input hash)`` for an :class:`~symopt.derive.elementwise.ElementPlan`."""
    spec = plan.spec
    ids = _hyper_ids(spec)
    digest = _hash([spec.fingerprint()], ELEMENTWISE_TEMPLATE)
    data = {
        "name": spec.name, "kind": spec.kind, "shape": "elementwise", "doc": spec.doc,
        "hyper": _hyper_data(spec, ids), "target_kind": spec.target_kind, "convention": spec.convention,
        "latex": {"definition": spec.latex(), "derivative": spec.latex(plan.display)},
        "derivative_form": plan.chosen,
        "derivative_uses_output": bool(spec.output is not None and spec.output in plan.derivative.free_symbols),
        "op_count": {"forward": plan.forward_ops, "derivative": plan.derivative_ops, "raw_derivative": plan.raw_ops},
    }
    ctx = {
        "header": _header(f"nn {spec.kind} {spec.name}", "symopt.nn", ELEMENTWISE_TEMPLATE, digest),
        "docstring": _elementwise_docstring(plan),
        "spec_literal": pprint.pformat(data, width=100, sort_dicts=False),
        "kernels": _elementwise_kernels(plan, ids),
    }
    ctx["vector_math"] = sorted(set().union(*(k["helpers"] for k in ctx["kernels"])))
    return environment().get_template(ELEMENTWISE_TEMPLATE).render(**ctx), digest


# ----------------------------------------------------------------------------- row-wise
def _rowwise_kernels(spec) -> tuple:
    from ..derive.elementwise import SCALE
    from ..derive.rowwise import plan_rowwise

    loss = spec.kind == "loss"
    arr = "z" if loss else "x"
    taken = set(_KERNEL_NAMES)
    names = {}
    for s in (spec.element, spec.onehot, spec.picked, spec.upstream, spec.output,
              *[r[0] for r in spec.forward_reductions], *[r[0] for r in spec.grad_reductions]):
        if s is not None:
            names[s] = identifier(s.name, taken, prefix="v")
    names[SCALE] = "scale"
    layout = ([("value", ["z", "labels"], ()), ("value_and_grad", ["z", "labels", "scale_in", "out"], (SCALE,))]
              if loss else [("forward", ["x", "out"], ()), ("backward", ["x", "y", "g", "out"], ())])
    kernels, ops = [], {}
    for kname, args, extra in layout:
        plan = plan_rowwise(spec, kname, extra)
        ops[kname] = plan.ops
        for suffix, dtype in _DTYPES:
            nm = dict(names)
            for step in plan.steps:
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
            for step in plan.steps:
                if step[0] == "reduce":
                    _, sym, op, e = step
                    code = pr.doprint(e)
                    steps.append({"kind": "reduce", "name": nm[sym], "loads": loads([e]),
                                  "init": f"{pr.ctor}(-np.inf)" if op == "max" else zero,
                                  "reduce_code": f"max({nm[sym]}, {code})" if op == "max" else f"{nm[sym]} + {code}"})
                elif step[0] == "row":
                    steps.append({"kind": "row", "name": nm[step[1]], "code": pr.doprint(step[2])})
                else:
                    temps, (red,) = sp.cse([step[1]], symbols=sp.numbered_symbols("_e"), order="canonical")
                    for s, _ in temps:
                        nm[s] = s.name
                    steps.append({"kind": "elements", "loads": loads([red, *(e for _, e in temps)]),
                                  "temps": [(s.name, pr.doprint(e)) for s, e in temps], "code": pr.doprint(red)})
            prologue = [("scale", f"{pr.ctor}(scale_in)")] if SCALE in extra else []
            row_loads, accumulate = [], []
            if loss:
                row_loads.append(("lab", "labels[r]"))
            if plan.value is not None:
                prologue.append(("total", "0.0"))
                if spec.picked in plan.value.free_symbols:
                    row_loads.append((nm[spec.picked], f"{arr}[r, lab]"))
                accumulate.append(pr.doprint(plan.value))
            what = {
                "value": "Sum over rows of the loss of row r at label labels[r].",
                "value_and_grad": "Sum of the row losses; out[r, j] = scale * dL_r/dz[r, j].",
                "forward": "out[r, :] = softmax(x[r, :]).",
                "backward": "out[r, j] = sum_k g[r, k] dp_k/dx_j with y = softmax(x) (vector-Jacobian product).",
            }[kname]
            kernels.append({
                "name": f"{kname}_{suffix}", "args": args, "rows": arr, "prologue": prologue,
                "row_loads": row_loads, "steps": steps, "accumulate": accumulate,
                "result": "total" if plan.value is not None else "",
                "doc": docstring_text(f"{spec.name} {kname}, {dtype} arrays (2-D, C-contiguous). {what}"),
            })
    return kernels, ops


def render_rowwise(spec) -> tuple:
    """``(module text, input hash)`` for a :class:`~symopt.nn.spec.Rowwise` spec."""
    digest = _hash([spec.fingerprint()], ROWWISE_TEMPLATE)
    kernels, ops = _rowwise_kernels(spec)
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
        "header": _header(f"nn {spec.kind} {spec.name}", "symopt.nn", ROWWISE_TEMPLATE, digest),
        "docstring": docstring_text("\n".join(lines)),
        "spec_literal": pprint.pformat(data, width=100, sort_dicts=False),
        "kernels": kernels,
    }
    return environment().get_template(ROWWISE_TEMPLATE).render(**ctx), digest


# ----------------------------------------------------------------------------- symopt.gradient
def gradient_hash(program) -> str:
    parts = [f"{sp.srepr(g.template)}|{len(g.inputs)}|{len(g.params)}" for g in program.groups]
    return _hash(parts, GRADIENT_TEMPLATE)


def render_gradient(program) -> tuple:
    """``(module text, input hash)`` for a :class:`~symopt.derive.terms.TermProgram`.

    The module depends only on the term shapes, never on the sizes or the numbers
    in the tables, so equal shapes share one compiled module.
    """
    digest = gradient_hash(program)
    groups, terms = [], []
    for gi, g in enumerate(program.groups):
        plan = g.plan
        names = {s: s.name for s in (*g.inputs, *g.params)}
        names.update({s: s.name for s, _ in plan.forward})
        names.update({s: s.name for s, _ in plan.reverse})
        pr = KernelPrinter(names, "float64")
        groups.append({
            "name": f"term{gi}",
            "doc": docstring_text(f"Terms of shape {gi}: {sp.sstr(g.template)}"),
            "input_loads": [(s.name, j) for j, s in enumerate(g.inputs)],
            "param_loads": [(s.name, j) for j, s in enumerate(g.params)],
            "forward": [(s.name, pr.doprint(e)) for s, e in plan.forward],
            "value": pr.doprint(plan.value),
            "reverse": [(s.name, pr.doprint(e)) for s, e in plan.reverse],
            "grads": [(j, pr.doprint(e)) for j, e in enumerate(plan.grads)],
        })
        terms.append({"template": sp.sstr(g.template), "inputs": len(g.inputs), "params": len(g.params),
                      "forward_ops": plan.forward_ops, "reverse_ops": plan.reverse_ops})
    lines = ["symopt.gradient: value and gradient by reverse-mode accumulation.", "",
             "f is a sum of terms; each term shape below is evaluated in a loop over a table of",
             "input positions (p0, p1, ...) and constants (c0, c1, ...). Per term:"]
    for gi, t in enumerate(terms):
        lines.append(f"    shape {gi}: {t['template']}  -- forward {t['forward_ops']} ops, "
                     f"reverse {t['reverse_ops']} ops")
    ctx = {
        "header": _header("symopt.gradient expression", "user expression", GRADIENT_TEMPLATE, digest),
        "docstring": docstring_text("\n".join(lines)),
        "terms_literal": pprint.pformat(terms, width=100, sort_dicts=False),
        "groups": groups,
    }
    return environment().get_template(GRADIENT_TEMPLATE).render(**ctx), digest
