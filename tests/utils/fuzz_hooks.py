"""schemathesis hooks (loaded by file through SCHEMATHESIS_HOOKS, so this imports nothing from the project).

schemathesis leaves out path parameters that would route elsewhere (`.`, `..`, `/`, NUL, `%2F`), which are what the
path validator is there to refuse. These hooks put such paths back, in every place a client's path arrives: the URL
path parameter (each is percent-encoded as one segment, so it reaches the service's router whole), the listing's
`?path=` and the multipart bodies' `path`. The description types `Range` and `If-Range` as strings, so they would
get only random text; here they also get byte ranges and HTTP dates with fields out of every bound. Half the cases
keep what schemathesis generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

FRAGMENTS = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2e",
    "%252e%252e",
    "%25252e%25252e",
    "%c0%ae%c0%ae",
    "\\",
    "..\\..",
    "%5c",
    "\x00",
    "%00",
    "\n",
    "%0d%0a",
    "\x7f",
    "#",
    "%23",
    "C:",
    "c:\\win.ini",
    "file:",
    "s3://bucket",
    "/",
    "%2f",
    "",
    ".artifact.uploading.x",
    "x" * 256,
    "\u202e",
    "ok.txt",
]
ATTACK_PATHS = st.builds(
    lambda absolute, parts: ("/" if absolute else "") + "/".join(parts),
    st.booleans(),
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=6), min_size=1, max_size=5),
)

_NUMBER = st.integers(-1, 10**25).map(str) | st.sampled_from(["", "-", "+1", "0x10", "1e3", "\xb2"])
RANGES = st.builds(
    lambda unit, spans: f"{unit}={','.join(spans)}",
    st.sampled_from(["bytes", "BYTES", "items", ""]),
    st.lists(st.builds(lambda a, b: f"{a}-{b}", _NUMBER, _NUMBER) | _NUMBER, min_size=1, max_size=3),
)
# Mostly well-formed, so that one field out of bounds gets past the parser's first checks.
HTTP_DATES = st.builds(
    lambda day, month, year, clock, zone: f"Sun, {day} {month} {year} {clock} {zone}",
    st.sampled_from(["06", "0", "32"]) | _NUMBER,
    st.sampled_from(["Nov", "Foo"]),
    st.sampled_from(["1994", "-1", "99999", "99999999999999999999"]) | _NUMBER,
    st.sampled_from(["08:49:37", "99:99:99", "1:2"]),
    st.sampled_from(["GMT", "+0000", "-2400", "+99999999999", "+9999999999999999999999", ""]),
)
HEADER_VALUES = {"Range": RANGES, "If-Range": HTTP_DATES | st.sampled_from(['"etag"', 'W/"etag"', '"', "W/"])}


def _with_attack(
    container: dict[str, Any] | None, key: str, attacks: st.SearchStrategy[str] = ATTACK_PATHS
) -> st.SearchStrategy[Any]:
    if not isinstance(container, dict) or key not in container:
        return st.just(container)
    return st.just(container) | attacks.map(lambda attack: {**container, key: attack})


@schemathesis.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    return _with_attack(path_parameters, "path")


@schemathesis.hook
def flatmap_query(context: Any, query: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    return _with_attack(query, "path")


@schemathesis.hook
def flatmap_headers(context: Any, headers: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    if not isinstance(headers, dict) or not HEADER_VALUES.keys() & headers.keys():
        return st.just(headers)
    chosen = {name: HEADER_VALUES[name] for name in HEADER_VALUES.keys() & headers.keys()}
    return st.just(headers) | st.fixed_dictionaries(chosen).map(lambda values: {**headers, **values})


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    # A JSON body can carry what a URL cannot: a lone surrogate, escaped.
    return _with_attack(body, "path", ATTACK_PATHS | st.sampled_from(["\udc80.bin", "a/\ud800"]))
