"""Issue 13, case 9 (part): a client cannot write lines into the logs, and /ready tells strangers nothing about where
artifacts live."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import httpx

from app.logs import printable
from tests.utils.proxy import running_proxy
from tests.utils.raw_http import read_response

FORGED = 'FORGED 127.0.0.1:1 - "DELETE /api/2.0/mlflow-artifacts/artifacts/1/model.bin HTTP/1.1" 200'


def test_control_characters_in_a_path_cannot_forge_access_lines(tmp_path: Path) -> None:
    with running_proxy(str(tmp_path / "root"), tmp_path / "p") as proxy:
        encoded = "%0a" + FORGED.replace(" ", "%20").replace('"', "%22") + "%1b[2K"
        with socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))) as sock:
            sock.sendall(
                f"GET /api/2.0/mlflow-artifacts/artifacts/x{encoded} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            assert read_response(sock).status == 400
        assert proxy.logged("\\x0aFORGED")
        lines = proxy.log().splitlines()
        assert not [line for line in lines if line.startswith("FORGED")]
        assert not any("\x1b" in line for line in lines)


def test_the_json_log_keeps_control_characters_escaped(tmp_path: Path) -> None:
    with running_proxy(str(tmp_path / "root"), tmp_path / "p", extra_args=["--log-format", "json"]) as proxy:
        httpx.get(proxy.artifact_url("x%0ay"))
        assert proxy.logged("x\\\\x0ay")  # printable()'s escape, itself escaped by JSON
        for line in proxy.log().splitlines():
            if line.startswith("{"):
                json.loads(line)  # every line is still one whole JSON object


def test_printable_escapes_every_line_breaker() -> None:
    assert printable("a\nb\rc\x00d\x1be\x7ff\x85g\u2028h") == "a\\x0ab\\x0dc\\x00d\\x1be\\x7ff\\x85g\\u2028h"
    assert printable("models/é/ü.bin") == "models/é/ü.bin"


def test_ready_names_no_path_to_an_unauthenticated_prober(tmp_path: Path) -> None:
    root = tmp_path / "secret-location" / "artifacts"
    root.mkdir(parents=True)
    with running_proxy(str(root), tmp_path / "p") as proxy:
        shutil.rmtree(root)
        response = httpx.get(f"{proxy.url}/ready")
        assert response.status_code == 503
        assert "secret-location" not in response.text
        assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert proxy.logged(f"not ready: The artifact directory {root}")  # the operator still learns why
