"""The one sanitizer for every user-provided name and text that reaches generated code.

Generated modules are Python source, so every piece of user text is passed through
one of these functions before a template sees it:

* ``identifier(text, taken)`` -- a valid ASCII Python identifier, unique in
  ``taken``, that is not a keyword (soft keywords included), not a builtin, not a
  name the generated module defines or reads itself (:data:`RESERVED`: ``np``,
  ``numba``, ``scal``, ``chunks``, ..., and every identifier in the templates' code,
  :func:`template_names`), not one of the generator's numbered names
  (``s0``, ``_e3``) and at most :data:`MAX_IDENTIFIER` characters long.  With
  ``suffixes=("_i", "_c")`` the name *and* every suffixed form are kept free, so a
  state variable ``x`` and another called ``x_c`` cannot collide through the
  kernel's ``x_c = x[...]`` locals.
* ``module_name(text)`` -- a lower-case file/module name.
* ``comment_text(text)`` -- one line, ASCII only, safe inside ``#`` and inside a docstring.
* ``docstring_text(text)`` -- safe inside a non-raw ``\"\"\"...\"\"\"``: backslashes and
  quotes escaped, control and format characters (newlines excepted; bidi overrides,
  NUL, CR, line/paragraph separators included) written as ``\\x..``/``\\u....`` escapes.
* ``string_literal(text)`` and ``python_literal(data)`` -- Python literals of plain
  data, built from exact ``str``/``float``/``int``/``bool``/``None``/``list``/
  ``tuple``/``dict`` copies (a ``str`` or ``float`` subclass with its own
  ``__repr__`` cannot inject text) and checked with :func:`ast.literal_eval`.

Every function returns an exact ``str`` whatever it was given.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import math
import pprint
import re
import unicodedata

#: Names the generated modules and kernels define, import or read themselves
#: (templates/optimizer_module.py.jinja, templates/_util.jinja).  A user name never
#: becomes one of these; tests/test_hostile.py also feeds every name found in the
#: checked-in modules back in as user names.
RESERVED = frozenset({
    # module level
    "np", "numba", "math", "intrinsic", "types", "prange", "njit", "carray",
    "FAMILY", "VARIANTS", "SYMOPT_VERSION", "INPUT_HASH", "TEMPLATE", "RULES",
    "constraints", "select_variant", "h", "errors",
    # pointer helpers
    "typingctx", "addr", "sig", "codegen", "context", "builder", "signature", "args",
    # kernel arguments and locals
    "pptr", "gptr", "offs", "chunks", "scal", "check", "nbad", "bad", "c", "j", "lo", "hi", "n", "i", "o",
    "x", "row", "param", "grad", "param_c", "param_i", "grad_c", "grad_i",
    # per-step scalar function
    "t",
})
#: Every identifier the templates' code uses (``templates/*.jinja``, Jinja tags, strings and
#: comments removed), read once: a name a template adds (``work``, ``w``) is reserved at once.
_TEMPLATE_NAMES: frozenset | None = None


def template_names() -> frozenset:
    """Identifiers in the code of every template (not in their strings, comments or Jinja tags)."""
    global _TEMPLATE_NAMES
    if _TEMPLATE_NAMES is None:
        from importlib import resources

        found: set = set()
        for entry in sorted(resources.files("symopt.templates").iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".jinja"):
                found |= _code_identifiers(entry.read_text(encoding="utf-8"))
        _TEMPLATE_NAMES = frozenset(found)
    return _TEMPLATE_NAMES


def _code_identifiers(template: str) -> set:
    text = re.sub(r"\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}", " ", template, flags=re.S)
    text = re.sub(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'', " ", text)
    text = re.sub(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'', " ", text)
    text = re.sub(r"#[^\n]*", " ", text)
    return set(re.findall(r"(?<![0-9A-Za-z_])[A-Za-z_][0-9A-Za-z_]*", text))


#: Numbered names the generator itself uses (``s0`` per-step scalars, ``k0`` the same in the kernel dtype,
#: ``_e0``/``_c0`` CSE temporaries).
_NUMBERED = re.compile(r"(s|k|_e|_c)\d+")
#: Longest identifier derived from user text (a 10 000-character name is cut, then made unique).
MAX_IDENTIFIER = 40
_BUILTINS = frozenset(dir(builtins))


def _plain_str(text) -> str:
    """An exact ``str`` copy of ``text`` (``str`` subclasses lose their methods)."""
    if isinstance(text, str):
        return str.__str__(text) if type(text) is not str else text
    s = str(text)
    return str.__str__(s) if type(s) is not str else s


def _ascii_slug(text) -> str:
    text = unicodedata.normalize("NFKD", _plain_str(text))
    text = text.encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_")


def is_reserved(name: str) -> bool:
    """True when ``name`` may not be used as a generated identifier."""
    return (not name.isidentifier() or not name.isascii() or name.startswith("_")
            or keyword.iskeyword(name) or keyword.issoftkeyword(name)
            or name in _BUILTINS or name in RESERVED or _NUMBERED.fullmatch(name) is not None
            or name in template_names())


def identifier(text, taken: set | None = None, *, prefix: str = "v", suffixes: tuple = ()) -> str:
    """A safe identifier derived from ``text``, unique in ``taken`` (the result is added to it).

    ``suffixes``: forms the caller will also use (``name + "_c"``); they are kept
    free and reserved in ``taken`` too.
    """
    taken = set() if taken is None else taken
    if not (type(prefix) is str and prefix.isidentifier() and prefix.isascii() and not prefix.startswith("_")):
        raise ValueError(f"identifier prefix {prefix!r} is not a plain ASCII identifier")
    slug = _ascii_slug(text)[:MAX_IDENTIFIER].strip("_")
    if not slug or slug[0].isdigit() or is_reserved(slug) or any(is_reserved(slug + s) for s in suffixes):
        slug = f"{prefix}_{slug}"[:MAX_IDENTIFIER].rstrip("_") if slug else prefix

    def free(name: str) -> bool:
        forms = (name, *(name + s for s in suffixes))
        return all(f not in taken and not is_reserved(f) for f in forms)

    name, k = slug, 2
    while not free(name):
        name = f"{slug}_{k}"
        k += 1
    taken.add(name)
    taken.update(name + s for s in suffixes)
    return name


def module_name(text) -> str:
    """A module/file name for a rule name: ``notes.adam`` -> ``notes_adam`` (lower case, ASCII)."""
    slug = _ascii_slug(_plain_str(text).replace(".", "_"))[:60].strip("_").lower()
    if not slug or slug[0].isdigit() or keyword.iskeyword(slug) or keyword.issoftkeyword(slug) or slug in RESERVED:
        slug = f"rule_{slug}".rstrip("_")
    return slug


def comment_text(text, limit: int = 200) -> str:
    """One line of ASCII text, safe inside a ``#`` comment *and* inside a non-raw docstring:
    newlines, backslashes and non-ASCII characters as ``unicode_escape`` escapes, ``"`` as ``\\"``."""
    s = _plain_str(text)
    if len(s) > limit:
        s = s[:limit] + "..."
    return s.encode("unicode_escape").decode("ascii").replace('"', '\\"')


_DOC_ESCAPE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escape_char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch == '"':
        return '\\"'
    if unicodedata.category(ch) in _DOC_ESCAPE_CATEGORIES:
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return ch


def docstring_text(text, limit: int = 20000) -> str:
    """Text safe inside a non-raw ``\"\"\"...\"\"\"`` docstring: newlines kept, backslashes,
    quotes and control/format characters (bidi overrides included) escaped."""
    s = _plain_str(text)
    if len(s) > limit:
        s = s[:limit] + "..."
    return "\n".join("".join(_escape_char(ch) for ch in line) for line in s.split("\n"))


def plain_data(obj, where: str = "value"):
    """An exact-type copy of nested plain data: ``None``, ``bool``, ``int``, finite ``float``,
    ``str``, ``list``, ``tuple`` and ``dict`` with ``str`` keys.  Anything else raises."""
    if obj is None or obj is True or obj is False:
        return obj
    if isinstance(obj, bool):  # numpy bools are not bool; a bool subclass cannot exist
        return bool(obj)
    if isinstance(obj, int):
        return int.__index__(obj) if type(obj) is not int else obj
    if isinstance(obj, float):
        x = float.__float__(obj) if type(obj) is not float else obj
        if not math.isfinite(x):
            raise ValueError(f"{where}: non-finite number {x!r} cannot be written into generated code")
        return x
    if isinstance(obj, str):
        return _plain_str(obj)
    if isinstance(obj, (list, tuple)):
        items = [plain_data(x, f"{where}[{i}]") for i, x in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict key {k!r} is not a str")
            out[_plain_str(k)] = plain_data(v, f"{where}[{k!r}]")
        return out
    raise TypeError(f"{where}: {type(obj).__name__} {obj!r} is not plain data (None, bool, int, float, str, "
                    f"list, tuple, dict)")


def python_literal(data, *, width: int = 100) -> str:
    """Python source for plain ``data`` (``pprint`` layout), proven to read back equal."""
    clean = plain_data(data)
    text = pprint.pformat(clean, width=width, sort_dicts=False)
    if ast.literal_eval(text) != clean:  # pragma: no cover - pprint of plain data always round-trips
        raise ValueError("literal does not read back equal to its data")
    return text


def string_literal(text) -> str:
    """A Python string literal for ``text`` (``repr`` of an exact ``str`` copy)."""
    return repr(_plain_str(text))
