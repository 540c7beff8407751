"""Syntax highlighting of generated Python for the report, with the standard library's tokenizer.

:func:`highlight` wraps each token of a class worth colouring in ``<span class="…">`` (the
stylesheet of ``templates/report/_style.css.jinja`` gives the colours) and escapes every piece
of text; the text between tokens (spaces, line breaks) is copied as it is.  Source that does
not tokenize is shown escaped, without colours.
"""

from __future__ import annotations

import builtins
import io
import keyword
import token
import tokenize

from markupsafe import Markup, escape

_BUILTINS = frozenset(dir(builtins))


def _classes(tokens) -> list:
    """The CSS class (or None) of each token: keyword, builtin, function name, decorator, …"""
    out, prev = [], None
    for tok in tokens:
        kind = None
        if tok.type == token.NAME:
            if keyword.iskeyword(tok.string) or keyword.issoftkeyword(tok.string) and tok.string in ("match", "case"):
                kind = "kw"
            elif prev is not None and prev.type == token.NAME and prev.string in ("def", "class"):
                kind = "fn"
            elif prev is not None and prev.type == token.OP and prev.string == "@":
                kind = "dec"
            elif tok.string in _BUILTINS:
                kind = "bi"
        elif tok.type == token.OP:
            kind = "dec" if tok.string == "@" else "op"
        elif tok.type == token.NUMBER:
            kind = "num"
        elif tok.type == token.STRING or tok.type in {getattr(token, n, -1) for n in
                                                       ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")}:
            kind = "str"
        elif tok.type == tokenize.COMMENT:
            kind = "com"
        out.append(kind)
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
            prev = tok
    return out


def highlight(source: str) -> Markup:
    """``source`` as escaped HTML with a ``<span class>`` around each coloured token."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return escape(source)
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    offset = lambda rc: starts[rc[0] - 1] + rc[1] if rc[0] - 1 < len(starts) else len(source)
    parts, pos = [], 0
    for tok, kind in zip(tokens, _classes(tokens)):
        if tok.type == token.ENDMARKER:
            break
        a, b = offset(tok.start), offset(tok.end)
        if a < pos:  # dedent/indent tokens of zero width
            continue
        parts.append(escape(source[pos:a]))
        text = escape(source[a:b])
        parts.append(Markup(f'<span class="{kind}">{text}</span>') if kind and b > a else text)
        pos = b
    parts.append(escape(source[pos:]))
    return Markup("").join(parts)
