"""schemathesis against the served /openapi.json, over real HTTP, on a local destination.

Every operation gets schema-valid and schema-violating requests: parameters, headers and bodies, unexpected methods,
and (from tests/utils/fuzz_hooks.py) paths built from traversal, encoded, NUL, backslash and absolute fragments, and
out-of-bounds byte ranges and HTTP dates in `Range` and `If-Range`. The run passes only if every answer is a status
the description lists for the operation, with its content type, headers and schema, and no answer is a 5xx: the
MLflow client retries a 5xx seven times, so a client mistake answered with one costs minutes and repeated uploads.
A schema-violating request must be refused (4xx).

Left out: `positive_data_acceptance`, because some schema-valid requests get a 400 that depends on what is stored
(a parent path that is a file, a directory where a file is expected) and no schema can say that; the `/ajax-api/`
aliases, which are the same endpoints as `/api/`, described by the same entries (app/openapi_operations.py); and
the stateful phase, which would chain requests by their answers.

The CLI, not the pytest plugin: its lazy-fixture loader does not run under pytest 9.2 (it sets `Node._nodeid`).
Deterministic: derandomized generation (no seed, no example database), one worker, a bounded number of examples.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.utils.proxy import Proxy, running_proxy

HOOKS = Path(__file__).parent / "utils" / "fuzz_hooks.py"
EXAMPLES_PER_OPERATION = 20
RUN_TIMEOUT = 300  # a safety net against a hang: the run takes 15-30 s on a loaded 2-core machine


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("fuzz")
    with running_proxy(str(base / "artifacts"), base / "proxy") as proxy:
        yield proxy


def test_schemathesis_finds_no_5xx_and_no_answer_the_description_does_not_allow(served: Proxy, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--no-color",
        "run",
        f"{served.url}/openapi.json",
        "--generation-deterministic",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--exclude-checks",
        "positive_data_acceptance",
        "--exclude-path-regex",
        "^/ajax-api/",
        "--request-timeout",
        "60",
    ]
    # A clean environment: CI=true would load Hypothesis's CI profile; SCHEMATHESIS_* variables would change the run.
    env = {"SCHEMATHESIS_HOOKS": str(HOOKS), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-20000:]
    described = httpx.get(f"{served.url}/openapi.json").json()["paths"]
    fuzzed = sum(len(methods) for path, methods in described.items() if not path.startswith("/ajax-api/"))
    assert f"Tested: {fuzzed - 1}" in report, report[-5000:]  # all but GET of the document it loaded
    log = served.log()
    assert not re.search(r'HTTP/1\.1" 5\d\d ', log)  # the status, then bytes and duration (app/metrics.py)
    # The hooks' paths reached the validator (and were refused), so the run tested it.
    assert re.search(r'artifacts/[^ ]*\.\.[^ ]* HTTP/1\.1" 400 ', log)
