"""Rich display hooks: how Jupyter shows a Rule, Family, KernelPlan or gradient as HTML.

The objects live in lower layers (``rulebook/``, ``codegen/``), which never import the
report that draws them; their ``_repr_html_`` calls :func:`html`, and the public face
(``symopt/__init__.py``) registers the report with :func:`set_html_view`.  No SymPy here.
"""

from __future__ import annotations

_view = None


def set_html_view(view) -> None:
    """Register ``view(obj) -> str``, the HTML page of a displayable object."""
    global _view
    _view = view


def html(obj):
    """The registered view's HTML of ``obj``, or None (Jupyter then falls back to the LaTeX)."""
    return None if _view is None else _view(obj)
