"""`glob=` patterns, matched against paths relative to the listed or archived directory.

`*` matches within one segment (never a `/`), `?` one character of a segment, `[abc]`/`[a-z]`/`[!x]` one of a set,
and `**` as a whole segment any number of segments, none included: `**/*.png` matches `a.png` and `x/y/a.png`,
`data/**` everything below `data`. Anything else is literal.

Matching simulates the pattern as an automaton over the set of pattern positions (never backtracking), so the cost
is at most the pattern's length times the path's, whatever the pattern: `*a*a*a*...` cannot make a request spin.
A pattern only ever narrows what a request already covers; still, one that names a parent (`..`), starts at the
filesystem root or carries control characters is refused as the path validator would refuse it, so a client
learns its mistake rather than getting an empty answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.errors import InvalidParameter

MAX_GLOB_CHARS = 1024  # as long as a path can be (app/paths.py)
_CONTROL = re.compile("[\x00-\x1f\x7f\\\\]")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "lit" (a character), "one" (`?`), "set", "star" (`*`), "dirs" (`**/`), "any" (a final `**`)
    chars: str = ""
    negated: bool = False

    def takes(self, char: str) -> bool:
        """Whether this token consumes `char` (and, for the repeating kinds, may consume more)."""
        if self.kind == "lit":
            return char == self.chars
        if self.kind in ("any", "dirs"):
            return True
        if char == "/":
            return False
        if self.kind == "set":
            return _in_set(self.chars, char) != self.negated
        return True  # "one", "star"


def _in_set(spec: str, char: str) -> bool:
    i = 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-":
            if spec[i] <= char <= spec[i + 2]:
                return True
            i += 3
        else:
            if spec[i] == char:
                return True
            i += 1
    return False


class Glob:
    """A compiled pattern: `matches(relative_path)`."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._tokens = _tokenize(pattern)

    def matches(self, path: str) -> bool:
        tokens = self._tokens
        states = self._closure({0})
        for char in path:
            advanced: set[int] = set()
            for state in states:
                if state < 0:  # inside a segment that `**/` is consuming: it ends at the next `/`
                    advanced.add(state if char != "/" else -state - 1)
                    continue
                if state == len(tokens) or not tokens[state].takes(char):
                    continue
                kind = tokens[state].kind
                if kind == "dirs":
                    advanced.add(state if char == "/" else -state - 1)
                else:
                    advanced.add(state if kind in ("star", "any") else state + 1)
            states = self._closure(advanced)
            if not states:
                return False
        return len(tokens) in states

    def _closure(self, states: set[int]) -> set[int]:
        """States plus those reachable without a character: past a `*`, `**` or `**/` (at a segment's start) that
        matches nothing more. A negative state is inside a segment `**/` consumes: it has no way out but a `/`."""
        pending, seen = list(states), set(states)
        while pending:
            state = pending.pop()
            if 0 <= state < len(self._tokens) and self._tokens[state].kind in ("star", "any", "dirs"):
                if state + 1 not in seen:
                    seen.add(state + 1)
                    pending.append(state + 1)
        return seen


def _tokenize(pattern: str) -> list[_Token]:
    tokens: list[_Token] = []
    segments = pattern.split("/")
    for n, segment in enumerate(segments):
        after_dirs = bool(tokens) and tokens[-1].kind == "dirs"
        if n and not after_dirs:
            tokens.append(_Token("lit", "/"))
        if segment == "**":
            if n == len(segments) - 1:
                tokens.append(_Token("any"))  # a final `**`: everything below
            elif not after_dirs:  # `**/**/` is `**/`
                tokens.append(_Token("dirs"))  # `**/`: no directory, or any number of them
            continue
        i = 0
        while i < len(segment):
            char = segment[i]
            if char == "*":
                while i + 1 < len(segment) and segment[i + 1] == "*":
                    i += 1  # `a**b` inside a segment is `a*b`
                tokens.append(_Token("star"))
            elif char == "?":
                tokens.append(_Token("one"))
            elif char == "[" and (end := segment.find("]", i + 2)) > 0:
                spec = segment[i + 1 : end]
                negated = spec[0] in "!^"
                tokens.append(_Token("set", spec[1:] if negated else spec, negated))
                i = end
            else:
                tokens.append(_Token("lit", char))
            i += 1
    return tokens


def parse_glob(raw: str | None) -> Glob | None:
    """The `glob=` query parameter, or None when absent or empty; InvalidParameter (400) for a hostile one."""
    if not raw:
        return None
    if len(raw) > MAX_GLOB_CHARS:
        raise InvalidParameter(f"glob is longer than {MAX_GLOB_CHARS} characters")
    if _CONTROL.search(raw) or raw.startswith("/") or ".." in raw.split("/"):
        raise InvalidParameter("glob must be a relative pattern: no '..' segment, leading '/' or control characters")
    return Glob(raw)
