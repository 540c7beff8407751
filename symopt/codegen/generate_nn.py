"""Writing the ``symopt.nn`` kernel modules and the ``symopt.gradient`` modules.

* :func:`generate_nn` renders every loss and activation into ``generated/`` as
  ``nn_loss_<name>.py`` / ``nn_act_<name>.py`` (checked in, sealed; ``symopt
  generate`` calls it after the optimizer rules, and a test diffs the result).
  They are not optimizer rules, so the ``RULES`` index does not list them; the
  runtime finds them by module name.
* :func:`gradient_module` writes a user expression's module into the user cache
  (``$SYMOPT_CACHE_DIR/gradients``), with the optimizer user-rule machinery:
  sealed, audited text, written atomically under a lock, reused when intact,
  falling back to a private temporary folder or to memory.
"""

from __future__ import annotations

from pathlib import Path

from .generate import (UserModule, _locked, _verified_text, _warn_once, atomic_write, cache_dir, fallback_cache_dir,
                       seal, write_if_changed)
from .render_nn import gradient_hash, nn_module_name, render_elementwise, render_gradient, render_rowwise

__all__ = ["generate_nn", "gradient_module", "nn_modules"]


def nn_modules(names=None) -> dict:
    """``{module name: module text}`` for every loss and activation (or those in ``names``)."""
    from .accuracy import plan_elementwise
    from ..rulebook.nn import activations, losses
    from ..rulebook.nn.spec import Elementwise

    out = {}
    for table in (losses.LOSSES, activations.ACTIVATIONS):
        for name, build in table.items():
            spec = build()
            mod = nn_module_name(spec.kind, name)
            if names is not None and mod not in names and name not in names:
                continue
            if isinstance(spec, Elementwise):
                text, _ = render_elementwise(plan_elementwise(spec))
            else:
                text, _ = render_rowwise(spec)
            out[mod] = seal(text)
    return out


def generate_nn(out_dir: Path, names=None) -> list:
    """Write the nn kernel modules into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for mod, text in nn_modules(names).items():
        path = out_dir / f"{mod}.py"
        write_if_changed(path, text)
        written.append(path)
    return written


def gradient_module(program, directory: Path | None = None) -> UserModule:
    """The checked module of a :class:`~symopt.derive.terms.TermProgram`, cached on disk when possible."""
    from .audit import audit_module

    digest = gradient_hash(program)
    rendered: list = []

    def text() -> str:
        if not rendered:
            body, _ = render_gradient(program)
            sealed = seal(body)
            audit_module(sealed, "<symopt.gradient module>")
            rendered.append(sealed)
        return rendered[0]

    stem = f"grad_{digest[:16]}"
    primary = cache_dir() if directory is None else Path(directory)
    bases = [primary]
    fallback = fallback_cache_dir()
    if fallback is not None and fallback != primary:
        bases.append(fallback)
    failures: list = []
    for base in bases:
        path = base / "gradients" / f"{stem}.py"
        found = _verified_text(path, digest)
        if found is None:
            try:
                with _locked(path.parent / ".lock"):
                    found = _verified_text(path, digest)  # another process may have just written it
                    if found is None:
                        found = text()
                        atomic_write(path, found)
            except OSError as exc:
                failures.append((base, exc))
                continue
        _warn_once(failures, path.parent, root=base, what="gradient modules")
        return UserModule(path, digest, found, stem)
    _warn_once(failures, None, what="gradient modules")
    return UserModule(None, digest, text(), stem)
