"""Imports run one way: math -> plan/print/render -> generated -> runtime, verify beside.

Every ``import`` in ``symopt/`` -- module-level and function-local, relative ones resolved
-- is read with ``ast``; each symopt module is mapped to its layer by :data:`LAYERS`, and an
import is allowed only into a layer listed in :data:`MAY_IMPORT` for the importer's layer.
Import cycles between symopt modules fail too (function-local imports count).  A lazy
import of a heavy optional package (torch, matplotlib, sklearn) is fine anywhere; SymPy,
mpmath and Jinja2 are math/generation packages that the runtime never imports.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "symopt"

#: Layer of each module: the longest matching prefix wins (``symopt`` alone is the public face).
LAYERS = {
    "symopt._version": "base", "symopt.cachedirs": "base", "symopt.functions": "base", "symopt.files": "base",
    "symopt.frame_abi": "base",
    "symopt.views": "base",                           # display hooks: _repr_html_ of lower layers -> the report
    "symopt.rulebook": "math", "symopt.derive": "math",
    "symopt.codegen": "codegen",                      # planner, printers, templates, emitter, audit
    "symopt.generated": "generated",                  # the checked-in modules (generated/)
    "symopt.runtime": "runtime", "symopt.nn": "runtime",
    "symopt.user_modules": "wiring",                  # a user rule's generated module into the runtime
    "symopt.torch": "adapters", "symopt.jax": "adapters",
    "symopt.verify": "verify",
    "symopt.reporting": "face",                       # the HTML report: every stage, read back, side by side
    "symopt": "face",                                 # __init__, cli, demo, bench, provenance, schedule, gradients
}

#: The layers a module of each layer may import (its own included).
MAY_IMPORT = {
    "base": {"base"},
    "math": {"base", "math"},
    "codegen": {"base", "math", "codegen"},
    "generated": {"base", "generated"},
    "runtime": {"base", "generated", "runtime"},
    "wiring": {"base", "math", "codegen", "runtime", "wiring"},
    "adapters": {"base", "runtime", "adapters"},
    "verify": {"base", "math", "runtime", "verify"},
    "face": {"base", "math", "codegen", "generated", "runtime", "wiring", "adapters", "verify", "face"},
}

#: Packages of the math and generation stages, which these layers never import (not even lazily).
NEVER_IMPORTS = {"runtime": {"sympy", "mpmath", "jinja2"}, "adapters": {"sympy", "mpmath", "jinja2"}}

def layer_of(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    raise KeyError(f"{module} is in no layer: add it to LAYERS")


def module_names(root: Path) -> dict:
    """Dotted module name -> file, for every ``.py`` under ``root`` (the ``symopt`` folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, known: set) -> list:
    """``(imported name, line)`` for every import statement in the file, wherever it is.

    ``from X import y`` imports ``X.y`` when that is a module, else ``X``; a relative
    ``X`` is resolved against the importing module's package.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known or sub == "symopt.generated" else target, node.lineno))
    return sorted(set(found), key=lambda item: (item[1], item[0]))


def import_graph(root: Path) -> tuple:
    """``(edges, problems)``: edges between symopt modules, and every import against the layers."""
    files = module_names(root)
    known = set(files)
    edges: dict = {m: set() for m in files}
    problems = []
    for module, path in files.items():
        layer = layer_of(module)
        for name, line in imports_of(module, path, known):
            where = f"{path.relative_to(root.parent)}:{line}: {module} ({layer}) imports {name}"
            top = name.split(".")[0]
            if top != "symopt":
                if top in NEVER_IMPORTS.get(layer, ()):
                    problems.append(where)
                continue
            target = name
            while target not in known and target != "symopt.generated" and "." in target:
                target = target.rpartition(".")[0]  # symopt.x.attr -> symopt.x
            if layer_of(target) not in MAY_IMPORT[layer]:
                problems.append(f"{where} ({layer_of(target)})")
            if target in known and target != module:
                edges[module].add(target)
    return edges, problems


def cycles(edges: dict) -> list:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.add(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(frozenset(scc))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_import_runs_along_the_layers():
    _, problems = import_graph(PACKAGE)
    assert problems == [], "imports against the direction of the pipeline:\n" + "\n".join(problems)


def test_no_import_cycles_between_modules():
    edges, _ = import_graph(PACKAGE)
    found = cycles(edges)
    assert found == [], f"import cycles: {found}"


def test_every_module_has_a_layer():
    for module in module_names(PACKAGE):
        assert layer_of(module) in MAY_IMPORT, module


@pytest.mark.parametrize("file,line,expected", [
    # the runtime reaching back for the code generator, from inside a function
    ("runtime/kernels.py", "    from ..codegen.render import input_hash\n",
     "symopt.runtime.kernels (runtime) imports symopt.codegen.render (codegen)"),
    # math importing a printer at module level
    ("derive/reverse.py", "from symopt.codegen import audit\n",
     "symopt.derive.reverse (math) imports symopt.codegen.audit (codegen)"),
    # the runtime importing SymPy lazily
    ("runtime/layout.py", "    import sympy\n", "symopt.runtime.layout (runtime) imports sympy"),
])
def test_a_wrong_import_is_reported(tmp_path, file, line, expected):
    copy = tmp_path / "symopt"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / file
    text = target.read_text(encoding="utf-8")
    if line.startswith(" "):   # a function-local import: put it inside a new function at the end
        text += f"\n\ndef _injected():\n{line}"
    else:
        text = line + text
    target.write_text(text, encoding="utf-8")
    _, before = import_graph(PACKAGE)
    _, after = import_graph(copy)
    new = [p for p in after if p.split(": ", 1)[1] not in {q.split(": ", 1)[1] for q in before}]
    assert len(new) == 1 and expected in new[0], new


def test_a_new_cycle_is_reported(tmp_path):
    copy = tmp_path / "symopt"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "runtime" / "layout.py"
    target.write_text(target.read_text(encoding="utf-8") + "\n\ndef _injected():\n    from . import optimizer\n",
                      encoding="utf-8")
    edges, _ = import_graph(copy)
    assert frozenset({"symopt.runtime.optimizer", "symopt.runtime.layout"}) in cycles(edges)
    before, _ = import_graph(PACKAGE)
    assert frozenset({"symopt.runtime.optimizer", "symopt.runtime.layout"}) not in cycles(before)
