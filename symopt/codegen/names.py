"""The one sanitizer for every user-provided name that reaches generated code.

``identifier(text, taken)`` returns a valid, ASCII Python identifier that is not a
keyword, a builtin, a name the generated module defines, nor already in ``taken``.
``module_name(text)`` does the same for file/module names.  ``comment_text`` and
``docstring_text`` escape text for comments and docstrings, so a name holding
quotes, newlines, backslashes or 10 000 characters cannot end them early.
"""

from __future__ import annotations

import builtins
import keyword
import re
import unicodedata

#: Names the generated modules and kernels define or import themselves.
RESERVED = frozenset({
    "np", "numba", "math", "intrinsic", "types", "prange", "njit",
    "pptr", "gptr", "offs", "chunks", "scal", "check", "nbad", "c", "j", "lo", "hi", "n", "i", "o",
    "t", "param", "grad", "FAMILY", "VARIANTS", "SYMOPT_VERSION", "INPUT_HASH", "TEMPLATE",
    "constraints", "select_variant",
})
_RESERVED_PREFIXES = ("_e", "_c", "s", "_ptr", "_")
_MAX_LEN = 40


def _ascii_slug(text: str) -> str:
    text = unicodedata.normalize("NFKD", str(text))
    text = text.encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_")
    return text


def identifier(text: str, taken: set | None = None, *, prefix: str = "v") -> str:
    """A safe, unique identifier derived from ``text`` (added to ``taken``)."""
    taken = set() if taken is None else taken
    slug = _ascii_slug(text)[:_MAX_LEN]
    if (not slug or slug[0].isdigit() or keyword.iskeyword(slug) or keyword.issoftkeyword(slug)
            or slug in dir(builtins) or slug in RESERVED
            or re.fullmatch(r"(s|_e|_c)\d+", slug) or slug.startswith("_")):
        slug = f"{prefix}_{slug}" if slug else prefix
    name = slug
    k = 2
    while name in taken:
        name = f"{slug}_{k}"
        k += 1
    taken.add(name)
    return name


def module_name(text: str) -> str:
    """A module/file name for a rule name: ``notes.adam`` -> ``notes_adam``."""
    slug = _ascii_slug(text.replace(".", "_"))[:60].lower()
    if not slug or slug[0].isdigit() or keyword.iskeyword(slug) or slug in RESERVED:
        slug = f"rule_{slug}"
    return slug


def comment_text(text: str, limit: int = 200) -> str:
    """One line of text that is safe inside a ``#`` comment."""
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + "..."
    return s.encode("unicode_escape").decode("ascii")


def _escape_char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch == '"':
        return '\\"'
    if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return ch


def docstring_text(text: str, limit: int = 20000) -> str:
    """Text safe inside a non-raw ``\"\"\"...\"\"\"`` docstring: newlines kept, backslashes,
    quotes and control/format characters (bidi overrides included) escaped."""
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + "..."
    return "\n".join("".join(_escape_char(ch) for ch in line) for line in s.split("\n"))


def string_literal(text: str) -> str:
    """A Python string literal for ``text`` (``repr`` is exact and safe)."""
    return repr(str(text))
