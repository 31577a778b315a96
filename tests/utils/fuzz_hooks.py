"""schemathesis hooks (loaded by file through SCHEMATHESIS_HOOKS, so this imports nothing from the project).

schemathesis leaves out path parameters that would route elsewhere (`.`, `..`, `/`, NUL, `%2F`), which are what the
path validator is there to refuse. These hooks put such paths back, in every place a client's path arrives: the URL
path parameter (each is percent-encoded as one segment, so it reaches the service's router whole), the listing's
`?path=` and the multipart bodies' `path`. Half the cases keep what schemathesis generated.
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


def _with_attack(container: dict[str, Any] | None, key: str) -> st.SearchStrategy[Any]:
    if not isinstance(container, dict) or key not in container:
        return st.just(container)
    return st.just(container) | ATTACK_PATHS.map(lambda attack: {**container, key: attack})


@schemathesis.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    return _with_attack(path_parameters, "path")


@schemathesis.hook
def flatmap_query(context: Any, query: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    return _with_attack(query, "path")


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    return _with_attack(body, "path")
