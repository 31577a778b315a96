"""A stand-in for Google's metadata server and IAM's signBlob, for a GCS store with no key file (GKE Workload
Identity). Neither exists here, so this answers as they do, over HTTP, and signs with the throwaway service-account
key fake-gcs-server's tests already use (tests/servers/gcs.py). Real IAM signs with a key Google holds for the account;
signing with the key file's key instead makes its signatures the ones the key file gives, so the two paths' URLs can
be compared byte for byte.

It runs as a process of its own (`python -m tests.servers.gce PORT KEY_FILE`, the token to hand out in
STAND_IN_TOKEN), started by `gce_stand_in`, and checks what the real services check: `Metadata-Flavor: Google` on
metadata requests (403 without), the bearer token on signBlob (401), the account signed as (403 for another). How it
fails is switched through `PUT /control/<sign|email>` with a mode: tests make IAM refuse or be down, or the metadata
server name no account, without restarting anything.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.servers import STARTUP_TIMEOUT, free_port, http_ok, start_process, stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]

METADATA = "/computeMetadata/v1"
SIGN_BLOB = re.compile(r"^/v1/projects/-/serviceAccounts/([^/:]+):signBlob$")
# Google's error answers, as IAM sends them for each way signBlob can be refused.
REFUSALS: dict[str, tuple[int, str, str]] = {
    "deny": (
        403,
        "Permission 'iam.serviceAccounts.signBlob' denied on resource (or it may not exist).",
        "IAM_PERMISSION_DENIED",
    ),
    "scope": (403, "Request had insufficient authentication scopes.", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"),
    "unavailable": (503, "The service is currently unavailable.", ""),
}
SIGN_MODES = {"ok", *REFUSALS}
EMAIL_MODES = {"ok", "missing", "principal"}  # principal: a bare Workload Identity Federation principal, no account


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, key_file: Path, token: str) -> None:
        document = json.loads(key_file.read_text(encoding="utf-8"))
        self.email, self.key_id = document["client_email"], document["private_key_id"]
        key = serialization.load_pem_private_key(document["private_key"].encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self.key = key
        self.token, self.modes = token, {"sign": "ok", "email": "ok"}
        self.lock = threading.Lock()
        self.calls, self.in_flight, self.max_in_flight = 0, 0, 0
        super().__init__(("127.0.0.1", port), Handler)


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the tests' output stays readable
        pass

    def answer(self, status: int, body: object, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def google_error(self, status: int, message: str, reason: str = "") -> None:
        error: dict[str, Any] = {"code": status, "message": message, "status": "PERMISSION_DENIED"}
        if reason:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}]
        self.answer(status, {"error": error})

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/control/calls":
            with self.server.lock:
                return self.answer(200, {"signBlob": self.server.calls, "max_in_flight": self.server.max_in_flight})
        if not path.startswith(METADATA):
            return self.answer(404, "not found", "text/plain")
        if self.headers.get("Metadata-Flavor") != "Google":  # what keeps a metadata server from answering SSRF
            return self.answer(403, "Missing Metadata-Flavor:Google header.", "text/plain")
        account = f"{METADATA}/instance/service-accounts/default"
        if path == f"{account}/token":
            return self.answer(200, {"access_token": self.server.token, "expires_in": 3599, "token_type": "Bearer"})
        if path == f"{account}/email":
            mode = self.server.modes["email"]
            if mode == "missing":
                return self.answer(404, "not found", "text/plain")
            return self.answer(200, "test.svc.id.goog" if mode == "principal" else self.server.email, "text/plain")
        if path == f"{METADATA}/project/project-id":
            return self.answer(200, "test", "text/plain")
        self.answer(404, "not found", "text/plain")

    def do_PUT(self) -> None:
        what, mode = self.path.rsplit("/", 1)[-1], self.rfile.read(int(self.headers["Content-Length"])).decode()
        if (what, mode) not in {("sign", m) for m in SIGN_MODES} | {("email", m) for m in EMAIL_MODES}:
            return self.answer(400, f"no mode {mode!r} for {what!r}", "text/plain")
        self.server.modes[what] = mode
        self.answer(200, {})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = SIGN_BLOB.match(self.path)
        if not match:
            return self.answer(404, "not found", "text/plain")
        with self.server.lock:
            self.server.calls += 1
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        try:
            self.sign(unquote(match.group(1)), body)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def sign(self, account: str, body: bytes) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return self.google_error(401, "Request had invalid authentication credentials.")
        if self.server.modes["sign"] in REFUSALS:
            return self.google_error(*REFUSALS[self.server.modes["sign"]])
        if account != self.server.email:
            return self.google_error(403, *REFUSALS["deny"][1:])
        payload = base64.b64decode(json.loads(body)["payload"], validate=True)
        signature = self.server.key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        self.answer(200, {"keyId": self.server.key_id, "signedBlob": base64.b64encode(signature).decode()})


# the tests' side -----------------------------------------------------------------------------------------------------
@dataclass
class GCEStandIn:
    url: str
    token: str  # the access token it hands out: what must never reach a log
    env: dict[str, str] = field(default_factory=dict)  # what points a store at it

    def set(self, what: str, mode: str) -> None:
        httpx.put(f"{self.url}/control/{what}", content=mode, timeout=10).raise_for_status()

    @contextmanager
    def failing(self, what: str, mode: str) -> Iterator[None]:
        self.set(what, mode)
        try:
            yield
        finally:
            self.set(what, "ok")

    def calls(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/control/calls", timeout=10).json())


@contextmanager
def gce_stand_in(key_file: Path, tmp_dir: Path) -> Iterator[GCEStandIn]:
    port, token = free_port(), f"ya29.stand-in-{secrets.token_urlsafe(24)}"
    args = [sys.executable, "-m", "tests.servers.gce", str(port), str(key_file)]
    env = {"STAND_IN_TOKEN": token}
    process = start_process(args, tmp_dir / "gce-stand-in.log", env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(http_ok(f"{url}/control/calls"), STARTUP_TIMEOUT, "the metadata and IAM stand-in", process)
        env = {"GCE_METADATA_HOST": f"127.0.0.1:{port}", "ARTIFACT_PROXY_GCS_IAM_API_ROOT": url}
        yield GCEStandIn(url, token, env)
    finally:
        stop_process(process)


if __name__ == "__main__":
    StandIn(int(sys.argv[1]), Path(sys.argv[2]), os.environ["STAND_IN_TOKEN"]).serve_forever()
