"""Typeset math for the report: SymPy's presentation-MathML printer, with the rules' own names.

Browsers render MathML Core natively (Chromium 109+, Firefox, Safari), so a page needs no
script, font or network.  :class:`MathPrinter` is
:class:`sympy.printing.mathml.MathMLPresentationPrinter` with two overrides: a symbol prints
under its display name (a LaTeX name of a rule, ``\\beta_{1}``, read by :func:`name_node`, a
small LaTeX-subset reader that never fails: what it does not know stays literal text), and a
sub-expression in ``highlight`` is wrapped in ``<mrow class="diff">`` (the term that differs
between two conventions).  Every text goes through the DOM, so user text is escaped.
"""

from __future__ import annotations

import html
import re
import unicodedata
from xml.dom.minidom import Document, Text

import sympy as sp
from markupsafe import Markup
from sympy.printing.conventions import split_super_sub
from sympy.printing.mathml import MathMLPresentationPrinter

_GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
          "nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega")


def _greek(name: str, case: str) -> str:
    return unicodedata.lookup(f"GREEK {case} LETTER {name.upper().replace('LAMBDA', 'LAMDA')}")


#: LaTeX commands read as one character.
_SYMBOLS = {
    **{g: _greek(g, "SMALL") for g in _GREEK}, **{g.capitalize(): _greek(g, "CAPITAL") for g in _GREEK},
    "varepsilon": "ε", "varphi": "ϕ", "infty": "∞", "ell": "ℓ", "partial": "∂", "nabla": "∇",
}
_OPERATORS = {"cdot": "·", "times": "×", "prime": "′", "pm": "±", ",": "\u2009", ";": "\u2005", " ": " ",
              "{": "{", "}": "}", "_": "_", "%": "%", "$": "$", "#": "#", "&": "&", "\\": "\\"}
_ACCENTS = {"hat": "^", "bar": "¯", "tilde": "~", "widetilde": "~", "widehat": "^", "dot": "˙", "vec": "→",
            "overline": "¯"}
_WORDS = {"min", "max", "log", "exp", "sqrt", "sign", "sgn", "lim", "sup", "inf", "arg"}
_TEXT = {"text", "mathrm", "operatorname", "textrm", "mathit", "textit"}
_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|[{}_^]|[^\W\d_]{2,}|.", re.DOTALL)
#: SymPy's ASCII hyphen as an operator is a minus sign.
_MINUS = {"-": "\u2212"}


def _text(doc: Document, data: str) -> Text:
    """A text node that is escaped when written (SymPy's printer writes its own nodes raw)."""
    node = Text()
    node.data = data
    node.ownerDocument = doc
    return node


class _Reader:
    """A recursive reader of the LaTeX used in symbol names (``\\hat{m}_{t}``, ``v^{\\max}``)."""

    def __init__(self, doc: Document, text: str):
        # spaces separate tokens, as in LaTeX; an escaped space (``\ ``) stays
        self.doc, self.tokens, self.pos = doc, [t for t in _TOKEN.findall(text) if not t.isspace()], 0

    def el(self, tag, *children, text=None, **attrs):
        node = self.doc.createElement(tag)
        for k, v in attrs.items():
            node.setAttribute(k, v)
        if text is not None:
            node.appendChild(_text(self.doc, text))
        for c in children:
            node.appendChild(c)
        return node

    def row(self, nodes):
        return nodes[0] if len(nodes) == 1 else self.el("mrow", *nodes)

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def group(self, close=None) -> list:
        out = []
        while self.peek() is not None and self.peek() != close:
            out.append(self.scripted())
        if close is not None and self.peek() == close:
            self.pos += 1
        return out

    def raw_group(self) -> str:
        """The plain text of ``{...}`` (for ``\\text``)."""
        if self.peek() != "{":
            tok = self.peek() or ""
            self.pos += 1
            return tok
        self.pos += 1
        depth, out = 1, []
        while self.peek() is not None:
            tok = self.tokens[self.pos]
            self.pos += 1
            depth += tok == "{"
            depth -= tok == "}"
            if depth == 0:
                break
            out.append(tok[1:] if tok.startswith("\\") and len(tok) == 2 else tok)
        return "".join(out)

    def atom(self):
        if self.pos >= len(self.tokens):  # a command or script at the very end: nothing to read
            return self.el("mrow")
        tok = self.tokens[self.pos]
        self.pos += 1
        if tok == "{":
            return self.row(self.group("}") or [self.el("mrow")])
        if tok in ("_", "^", "}"):
            return self.el("mo", text=tok)
        if tok.startswith("\\"):
            cmd = tok[1:]
            if cmd in _SYMBOLS:
                return self.el("mi", text=_SYMBOLS[cmd])
            if cmd in _OPERATORS:
                return self.el("mo", text=_OPERATORS[cmd])
            if cmd in _ACCENTS and self.peek() is not None:
                return self.el("mover", self.atom(), self.el("mo", text=_ACCENTS[cmd]), accent="true")
            if cmd in _WORDS:
                return self.el("mi", text=cmd, mathvariant="normal")
            if cmd == "frac" and self.pos + 1 < len(self.tokens):
                return self.el("mfrac", self.atom(), self.atom())
            if cmd in _TEXT:
                return self.el("mtext", text=self.raw_group())
            return self.el("mtext", text=tok)  # unknown: shown as written
        if tok.isdigit():
            return self.el("mn", text=tok)
        if tok.isalpha():  # a run of letters is one name (upright when longer than one letter)
            return self.el("mi", text=tok)
        return self.el("mo", text=_MINUS.get(tok, tok))

    def scripted(self):
        base = self.atom()
        sub = sup = None
        while self.peek() in ("_", "^") and self.pos + 1 < len(self.tokens):
            which = self.tokens[self.pos]
            self.pos += 1
            arg = self.atom()
            if which == "_" and sub is None:
                sub = arg
            elif which == "^" and sup is None:
                sup = arg
            else:
                base = self.el("msub" if which == "_" else "msup", base, arg)
        if sub is not None and sup is not None:
            return self.el("msubsup", base, sub, sup)
        if sub is not None:
            return self.el("msub", base, sub)
        if sup is not None:
            return self.el("msup", base, sup)
        return base


def name_node(doc: Document, latex: str):
    """The MathML of a symbol's LaTeX display name (``\\beta_{1}`` -> β₁); literal text where unknown."""
    reader = _Reader(doc, latex)
    try:
        nodes = reader.group()
    except RecursionError:  # absurdly nested braces in a user name: show it as written
        return reader.el("mtext", text=latex)
    return reader.row(nodes) if nodes else reader.el("mtext", text=latex)


class MathPrinter(MathMLPresentationPrinter):
    """Presentation MathML with display names for symbols and highlighted sub-expressions."""

    def __init__(self, names: dict | None = None, highlight=(), doc: Document | None = None):
        super().__init__({"mul_symbol": None})
        self.names = dict(names or {})
        self.highlight = set(highlight)
        # SymPy writes its text nodes unescaped (its own entities, ``&InvisibleTimes;``); here every
        # text node is escaped, SymPy's entities turned into the characters they name first.
        self.dom = doc or Document()
        self.dom.createTextNode = lambda data: _text(self.dom, _MINUS.get(data, None) or html.unescape(data))

    def _print(self, expr, **kwargs):
        node = super()._print(expr, **kwargs)
        if self.highlight and isinstance(expr, sp.Basic) and expr in self.highlight:
            wrap = self.dom.createElement("mrow")
            wrap.setAttribute("class", "diff")
            wrap.appendChild(node)
            return wrap
        return node

    def _print_Symbol(self, sym, style="plain"):
        if sym in self.names:
            return name_node(self.dom, self.names[sym])
        # A plain name is text, never read as LaTeX: split as SymPy splits it (beta1 -> β₁).
        reader = _Reader(self.dom, "")
        base, sups, subs = split_super_sub(sym.name)
        node = reader.el("mi", text=_SYMBOLS.get(base, base))
        word = lambda w: reader.el("mi", text=_SYMBOLS.get(w, w))
        if subs:
            node = reader.el("msub", node, reader.row([word(x) for x in subs]))
        if sups:
            node = reader.el("msup", node, reader.row([word(x) for x in sups]))
        return node

    _print_Dummy = _print_Symbol


def _math(children, display: bool) -> Markup:
    doc = Document()
    node = doc.createElement("math")
    if display:  # display style, but inline: left-aligned in its block (display="block" centres)
        node.setAttribute("displaystyle", "true")
    for c in children:
        node.appendChild(c)
    return Markup(node.toxml())


def math(expr, names: dict | None = None, *, display: bool = False, highlight=()) -> Markup:
    """``<math>`` of one expression."""
    p = MathPrinter(names, highlight)
    return _math([p._print(sp.sympify(expr))], display)


def equations(rows, *, highlight=()) -> Markup:
    """A block ``<math>`` table of equations: ``rows`` of ``(lhs, relation, rhs, names)``, ``lhs``
    and ``rhs`` SymPy objects (or a LaTeX name string for ``lhs``), ``relation`` ``=`` or ``←``."""
    doc = Document()
    table = doc.createElement("mtable")
    for lhs, rel, rhs, names in rows:
        p = MathPrinter(names, highlight, doc)
        left = name_node(doc, lhs) if isinstance(lhs, str) else p._print(lhs)
        cells = [left, doc.createElement("mo"), p._print(sp.sympify(rhs))]
        cells[1].appendChild(_text(doc, rel))
        tr = doc.createElement("mtr")
        for k, c in enumerate(cells):
            td = doc.createElement("mtd")
            td.setAttribute("class", ("lhs", "rel", "rhs")[k])
            td.appendChild(c)
            tr.appendChild(td)
        table.appendChild(tr)
    return _math([table], True)


def _print_piecewise(self, expr):
    """``{ value  if condition`` rows, the last ``otherwise``."""
    doc = self.dom
    row = doc.createElement("mrow")
    brace = doc.createElement("mo")
    brace.appendChild(_text(doc, "{"))
    row.appendChild(brace)
    table = doc.createElement("mtable")
    table.setAttribute("class", "cases")
    for value, cond in expr.args:
        tr = doc.createElement("mtr")
        for cell in (self._print(value), None):
            td = doc.createElement("mtd")
            if cell is None:
                word = doc.createElement("mtext")
                word.appendChild(_text(doc, "otherwise" if cond == sp.true else "if\u2002"))
                td.appendChild(word)
                if cond != sp.true:
                    td.appendChild(self._print(cond))
            else:
                td.appendChild(cell)
            tr.appendChild(td)
        table.appendChild(tr)
    row.appendChild(table)
    return row


MathPrinter._print_Piecewise = _print_piecewise


def _print_reduction(self, expr):
    """``Σ`` (or ``mean``) under its scope, then the elementwise argument in parentheses."""
    doc = self.dom
    under = doc.createElement("munder")
    op = doc.createElement("mo")
    op.appendChild(_text(doc, "Σ" if expr.op == "sum" else "mean"))
    scope = doc.createElement("mtext")
    scope.appendChild(_text(doc, {"tensor": "tensor", "global": "all tensors", "row": "row j",
                                  "col": "column i"}[expr.scope]))
    under.appendChild(op)
    under.appendChild(scope)
    row = doc.createElement("mrow")
    row.appendChild(under)
    for text, node in (("(", None), (None, self._print(expr.args[0])), (")", None)):
        if node is None:
            node = doc.createElement("mo")
            node.appendChild(_text(doc, text))
        row.appendChild(node)
    return row


# SymPy dispatches a Function subclass by its own class name only (not by a base such as Reduction).
for _name in ("TensorSum", "TensorMean", "GlobalSum", "GlobalMean", "RowMean", "ColMean"):
    setattr(MathPrinter, f"_print_{_name}", _print_reduction)
