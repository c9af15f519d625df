"""Raw LaTeX (as written in InkML truths, or typed by a user) -> CROHME caption tokens.

Captions follow one convention: every script and argument is braced
(`x ^ { 2 }`, `\\frac { a } { b }`), other braces are dropped, numbers and
words are split into characters, `\\left`/`\\right`/`\\mbox`/spacing vanish,
and synonyms take the dictionary's name (`\\le` -> `\\leq`, `\\to` ->
`\\rightarrow`, `'` -> `\\prime`).
"""

from __future__ import annotations

import re

from model.vocab import UnknownTokenError, Vocabulary


class LatexError(ValueError):
    """LaTeX that cannot be tokenized (unbalanced braces, missing argument...)."""


SYNONYMS = {
    "\\le": "\\leq", "\\ge": "\\geq", "\\ne": "\\neq", "\\to": "\\rightarrow", "\\gets": "\\leftarrow",
    "\\lt": "<", "\\gt": ">", "\\dots": "\\ldots", "\\cdotp": "\\cdot", "\\lbrace": "\\{", "\\rbrace": "\\}",
    "\\vert": "|", "\\mid": "|", "\\lvert": "|", "\\rvert": "|", "\\ast": "*", "'": "\\prime",
    "\\lbrack": "[", "\\rbrack": "]", "\\geqslant": "\\geq", "\\leqslant": "\\leq", "\\Rightarrow": "\\rightarrow",
    "\\longrightarrow": "\\rightarrow", "\\dotsc": "\\ldots", "\\dotsb": "\\cdots", "\\inf": "\\infty",
}  # fmt: skip
DROPPED = {"\\left", "\\right", "\\displaystyle", "\\,", "\\;", "\\:", "\\!", "\\ ", "\\quad", "\\qquad",
           "\\big", "\\Big", "\\bigg", "\\Bigg", "\\limits_", "~"}  # fmt: skip
UNWRAP = {"\\mbox", "\\mathrm", "\\rm", "\\text", "\\textrm", "\\mathit", "\\operatorname", "\\mathbf"}
SCRIPTS = {"^", "_"}

_TOKEN = re.compile(r"\\[a-zA-Z]+|\\.|[^\s]")


def _lex(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("$") and text.endswith("$") and len(text) >= 2:
        text = text.strip("$")
    text = text.replace("$", " ")
    return _TOKEN.findall(text)


class _Parser:
    def __init__(self, tokens: list[str], source: str) -> None:
        self.toks = tokens
        self.i = 0
        self.source = source

    def error(self, msg: str) -> LatexError:
        return LatexError(f"{msg} in {self.source!r}")

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def sequence(self, closer: str | None) -> list[str]:
        out: list[str] = []
        while True:
            tok = self.peek()
            if tok is None:
                if closer is not None:
                    raise self.error(f"missing {closer!r}")
                return out
            if tok == closer:
                self.take()
                return out
            if tok == "}" and closer != "}":
                raise self.error("unbalanced '}'")
            out += self.item()

    def argument(self, what: str) -> list[str]:
        """The contents of one argument: a braced group or a single item."""
        while self.peek() in DROPPED:
            self.take()
        tok = self.peek()
        if tok is None or tok == "}":
            raise self.error(f"{what} has no argument")
        if tok == "{":
            self.take()
            return self.sequence("}")
        if tok in SCRIPTS:
            raise self.error(f"{what} is followed by another script")
        return self.item()

    def item(self) -> list[str]:
        tok = self.take()
        if tok == "{":
            return self.sequence("}")  # a bare group: its braces are not part of captions
        if tok in DROPPED:
            return []
        if tok in UNWRAP:
            return self.argument(tok)
        if tok in SCRIPTS:
            return [tok, "{", *self.argument(tok), "}"]
        if tok == "\\frac":
            num = self.argument("\\frac")
            den = self.argument("\\frac")
            return ["\\frac", "{", *num, "}", "{", *den, "}"]
        if tok == "\\sqrt":
            out = ["\\sqrt"]
            if self.peek() == "[":
                self.take()
                out += ["[", *self.sequence("]"), "]"]
            return out + ["{", *self.argument("\\sqrt"), "}"]
        return [SYNONYMS.get(tok, tok)]


def tokenize(latex: str) -> list[str]:
    """CROHME caption tokens of a LaTeX string; raises LatexError on malformed input."""
    tokens = _Parser(_lex(latex), latex).sequence(None)
    if not tokens:
        raise LatexError(f"no symbols in {latex!r}")
    return tokens


def tokenize_checked(latex: str, vocab: Vocabulary, where: str = "") -> list[str]:
    """`tokenize`, then reject any token outside the vocabulary (UnknownTokenError names it)."""
    tokens = tokenize(latex)
    unknown = vocab.unknown(tokens)
    if unknown:
        raise UnknownTokenError(unknown[0], where)
    return tokens
