"""The built-in catalog: every public rule name and the module that defines it.

Catalog modules (``notes``, ``torch_compat``, ``optax_compat``, ...) only build
:class:`~symopt.rulebook.rule.Family` objects; this module collects them.
"""

from __future__ import annotations

import functools
import importlib

#: Modules that contribute families, in listing order.  Each has ``families()``.
CATALOG_MODULES = (
    "symopt.rulebook.notes",
    "symopt.rulebook.torch_compat",
    "symopt.rulebook.optax_compat",
    "symopt.rulebook.research",
    "symopt.rulebook.matrix_rules",
    "symopt.rulebook.factored_rules",
    "symopt.rulebook.preconditioned_rules",
)


@functools.lru_cache(maxsize=None)
def builtin_families() -> dict:
    """``{public name: Family}`` for every built-in rule."""
    out: dict = {}
    for mod_name in CATALOG_MODULES:
        mod = importlib.import_module(mod_name)
        for fam in mod.families():
            if fam.name in out:
                raise RuntimeError(f"duplicate built-in rule name {fam.name!r} in {mod_name}")
            out[fam.name] = fam
    return out


def family(name: str):
    fams = builtin_families()
    try:
        return fams[name]
    except KeyError:
        raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(sorted(fams))}") from None
