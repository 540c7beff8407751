"""generated/ is exactly what `symopt generate` produces now, and every file is intact."""
import difflib
from pathlib import Path

import symopt.generated
from symopt.codegen.emit import generate_builtins, read_header_hash
from symopt.files import is_intact

GENERATED = Path(symopt.generated.__path__[0])


def _modules(root: Path) -> set:
    """Every module under ``root``: the Numba modules and those of each array backend (``torch/``, ``jax/``)."""
    return {str(p.relative_to(root)) for p in root.rglob("*.py") if "__pycache__" not in p.parts}


def test_generated_matches_fresh_generation(tmp_path):
    generate_builtins(tmp_path)
    fresh = _modules(tmp_path)
    checked_in = _modules(GENERATED)
    assert fresh == checked_in, (
        f"files differ: only fresh {sorted(fresh - checked_in)}, only checked in {sorted(checked_in - fresh)}; "
        f"run `python -m symopt generate`")
    for name in sorted(fresh):
        new = (tmp_path / name).read_text()
        old = (GENERATED / name).read_text()
        if new != old:
            diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                f"generated/{name}", f"fresh/{name}", n=2))
            raise AssertionError(f"generated/{name} is stale; run `python -m symopt generate`:\n{diff[:4000]}")


def test_every_generated_module_is_sealed_and_names_its_source():
    for path in (GENERATED / name for name in _modules(GENERATED)):
        assert is_intact(path), f"{path.name}: content hash does not match (edited by hand?)"
        text = path.read_text()
        assert "DO NOT EDIT" in text.splitlines()[1]
        assert "# source rule:" in text and "# input hash:" in text and "# template:" in text
        if path.name != "__init__.py" and not path.name.startswith("nn_"):
            if path.parent != GENERATED:
                assert "BACKEND = " in text and "FORMULA_HASH = " in text
            assert read_header_hash(path) is not None


def test_index_lists_every_builtin_rule():
    from symopt.rulebook.catalog import builtin_families

    assert list(symopt.generated.RULES) == list(builtin_families())
