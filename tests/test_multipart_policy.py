"""Multipart uploads obey the upload policy (issue 13, case 7), and self-signed URLs are parsed strictly and audited
(issue 13, case 9), against the real service over sockets.

- Create-only (`ARTIFACT_PROXY_FORBID_OVERWRITE`): `mpu/create` refuses an existing target, and `mpu/complete` one
  that appeared since, with a PUT's 409, on every backend that does multipart; the refused upload is discarded.
- The size limit (`ARTIFACT_PROXY_MAX_UPLOAD_SIZE`) holds for the whole upload at complete on every backend, and for
  each part PUT of the local destination, whose part bodies also get the idle timeout and the interrupted-body rules.
- The presigned-only rule (`ARTIFACT_PROXY_PRESIGNED_ONLY_MIN_SIZE`) holds for a chunked PUT, which announces no size.
- Signed downloads and part PUTs write audit lines; malformed signatures are 403, not 500.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import httpx
import pytest

from app.errors import AlreadyExists, ResourceNotFound
from app.paths import TEMP_PREFIX, ArtifactPath
from app.storage.base import CompletedPart
from app.storage.local.sweep import STAGING_DIR
from tests.contract.stores import BACKENDS, fresh_prefix
from tests.servers import StorageServer, wait_until
from tests.utils.proxy import PATIENCE, Proxy, running_proxy
from tests.utils.raw_http import RawResponse, read_response
from tests.utils.streams import read_all, stream

MiB = 1024 * 1024
LIMIT = 6 * MiB  # over one 5 MiB part (the S3 minimum) plus a little, under two parts' worth
MULTIPART = ["local", "s3", "gcs", "azure"]
EXISTS = "ALREADY_EXISTS"


# HTTP helpers --------------------------------------------------------------------------------------------------------
def create(proxy: Proxy, path: str, num_parts: int) -> httpx.Response:
    directory, name = path.rsplit("/", 1)
    return httpx.post(f"{proxy.api}/mpu/create/{directory}", json={"path": name, "num_parts": num_parts}, timeout=60)


def put_parts(created: dict[str, Any], parts: list[bytes]) -> list[dict[str, Any]]:
    """PUT each part to its presigned URL; the part list a complete names."""
    done = []
    for credential, data in zip(created["credentials"], parts, strict=True):
        response = httpx.put(credential["url"], content=data, headers=credential["headers"], timeout=60)
        assert response.status_code in (200, 201), response.text
        done.append(
            {
                "part_number": credential["part_number"],
                "etag": response.headers.get("etag", ""),
                "url": credential["url"],
            }
        )
    return done


def complete(proxy: Proxy, path: str, created: dict[str, Any], parts: list[dict[str, Any]]) -> httpx.Response:
    directory, name = path.rsplit("/", 1)
    body = {"path": name, "upload_id": created.get("upload_id"), "parts": parts}
    return httpx.post(f"{proxy.api}/mpu/complete/{directory}", json=body, timeout=60)


def started(proxy: Proxy, path: str, num_parts: int = 1) -> dict[str, Any]:
    response = create(proxy, path, num_parts)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# every backend that does multipart ---------------------------------------------------------------------------------
@dataclass
class Deployment:
    backend: str
    proxy: Proxy
    server: StorageServer
    prefix: str  # the proxy's destination is this prefix of the server's, so raw looks see only this module's


@pytest.fixture(scope="module", params=MULTIPART)
def deployment(
    request: pytest.FixtureRequest,
    storage_server_for: Callable[[str], StorageServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    backend = str(request.param)
    server = storage_server_for(backend)
    prefix = fresh_prefix()
    env = {**server.env, "ARTIFACT_PROXY_FORBID_OVERWRITE": "true", "ARTIFACT_PROXY_MAX_UPLOAD_SIZE": str(LIMIT)}
    destination = f"{server.destination.rstrip('/')}/{prefix}"
    with running_proxy(destination, tmp_path_factory.mktemp(f"policy-{backend}"), env=env) as proxy:
        yield Deployment(backend, proxy, server, prefix)


@pytest.fixture
async def raw_store(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """A store on the proxy's own destination, to look beneath the service at what is really stored."""
    spec = next(backend for backend in BACKENDS if backend.name == deployment.backend)
    store = spec.make(deployment.server, deployment.prefix, monkeypatch)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def staged(backend: str, store: Any, path: str, upload_id: str | None) -> bool | None:
    """Whether anything of the upload is still staged: its parts cost storage until removed. None where that cannot
    be asked: Azure has no call that drops uncommitted blocks (they go with the blob's next commit, or in 7 days)."""
    if backend == "local":
        return os.path.exists(os.path.join(store.root, STAGING_DIR, str(upload_id)))
    if backend == "s3":
        s3 = store.client
        listed = await s3.sdk.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3.key(ArtifactPath(path)))
        return any(upload["UploadId"] == upload_id for upload in listed.get("Uploads", []))
    if backend == "gcs":
        prefix = f"{store.client.dir_prefix(ArtifactPath(''))}{STAGING_DIR}/{upload_id}/"
        page = await store.client.storage.list_objects(store.client.bucket, params={"prefix": prefix})
        return bool(page.get("items"))
    return None


def skip_unless_emulator_checks_conditions(deployment: Deployment) -> None:
    if deployment.backend == "gcs":
        pytest.skip("fake-gcs-server ignores ifGenerationMatch; compose's create-only is covered against GCS only")


def test_create_refuses_an_existing_target_as_a_put_does(deployment: Deployment) -> None:
    proxy, path = deployment.proxy, f"{fresh_prefix()}/model.bin"
    assert httpx.put(proxy.artifact_url(path), content=b"first", timeout=60).status_code == 200
    put = httpx.put(proxy.artifact_url(path), content=b"second", timeout=60)
    refused = create(proxy, path, 1)
    assert (put.status_code, put.json()["error_code"]) == (409, EXISTS)
    assert (refused.status_code, refused.json()) == (409, put.json())
    assert httpx.get(proxy.artifact_url(path), timeout=60).content == b"first"


async def test_complete_refuses_a_target_that_appeared_since_create(deployment: Deployment, raw_store: Any) -> None:
    skip_unless_emulator_checks_conditions(deployment)
    proxy, path = deployment.proxy, f"{fresh_prefix()}/model.bin"
    first, second = started(proxy, path), started(proxy, path)  # both before the target exists
    assert complete(proxy, path, first, put_parts(first, [b"first upload"])).status_code == 200
    parts = put_parts(second, [b"second upload"])
    refused = complete(proxy, path, second, parts)
    assert (refused.status_code, refused.json()["error_code"]) == (409, EXISTS), refused.text
    assert refused.json()["message"] == f"Artifact path already exists: '{path}'"
    assert httpx.get(proxy.artifact_url(path), timeout=60).content == b"first upload"
    assert await staged(deployment.backend, raw_store, path, second.get("upload_id")) in (False, None)
    # Its retry is refused too: the file there is not the one it would have built.
    assert complete(proxy, path, second, parts).status_code in (404, 409)
    assert httpx.get(proxy.artifact_url(path), timeout=60).content == b"first upload"


def test_a_retried_complete_still_succeeds_under_create_only(deployment: Deployment) -> None:
    proxy, path = deployment.proxy, f"{fresh_prefix()}/model.bin"
    upload = started(proxy, path)
    parts = put_parts(upload, [b"once"])
    assert complete(proxy, path, upload, parts).status_code == 200
    retried = complete(proxy, path, upload, parts)  # its first answer lost, say
    assert retried.status_code == 200, retried.text
    assert httpx.get(proxy.artifact_url(path), timeout=60).content == b"once"


async def test_an_upload_over_the_size_limit_is_413_at_complete_and_discarded(
    deployment: Deployment, raw_store: Any
) -> None:
    proxy, path = deployment.proxy, f"{fresh_prefix()}/big.bin"
    upload = started(proxy, path, 2)
    parts = put_parts(upload, [os.urandom(5 * MiB), os.urandom(2 * MiB)])  # each part is under the limit
    refused = complete(proxy, path, upload, parts)
    assert refused.status_code == 413, refused.text
    assert refused.json() == {
        "error_code": "BAD_REQUEST",
        "message": f"Upload of {7 * MiB} bytes exceeds the limit of {LIMIT} bytes",
    }
    assert httpx.get(proxy.artifact_url(path), timeout=60).status_code == 404
    assert await staged(deployment.backend, raw_store, path, upload.get("upload_id")) in (False, None)
    assert complete(proxy, path, upload, parts).status_code != 200


def test_concurrent_completes_onto_one_name_have_one_winner(deployment: Deployment) -> None:
    if deployment.backend != "local":
        # SeaweedFS and fake-gcs-server do not settle create-only completes atomically; on Azure every presigned
        # upload of a blob stages the same block ids, so two uploads of one blob cannot overlap at all.
        pytest.skip("only the local destination can show a race of create-only completes here")
    proxy, path, count = deployment.proxy, f"{fresh_prefix()}/model.bin", 4
    uploads = [started(proxy, path) for _ in range(count)]
    parts = [put_parts(upload, [f"upload {i}".encode()]) for i, upload in enumerate(uploads)]
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda i: complete(proxy, path, uploads[i], parts[i]), range(count)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] + [409] * (count - 1), [answer.text for answer in answers]
    winner = next(i for i, answer in enumerate(answers) if answer.status_code == 200)
    assert httpx.get(proxy.artifact_url(path), timeout=60).content == f"upload {winner}".encode()


# GCS: fake-gcs-server ignores ifGenerationMatch, so a shim answers a conditional compose as GCS does -----------------
async def test_gcs_compose_is_create_only_and_a_refused_one_discards_its_parts(
    storage_server_for: Callable[[str], StorageServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = next(backend for backend in BACKENDS if backend.name == "gcs")
    store = spec.make(storage_server_for("gcs"), fresh_prefix(), monkeypatch)
    await store.start()
    real_send, conditional = store.client.send, []

    async def send_as_gcs(method: str, url: str, ok: Any, **kwargs: Any) -> Any:
        if url.endswith("/compose") and (kwargs.get("params") or {}).get("ifGenerationMatch") == "0":
            conditional.append(url)
            target = url.removesuffix("/compose")
            found = await real_send("GET", target, (200, 404))
            found.release()
            if found.status == 200:
                info = SimpleNamespace(real_url=url, method=method)
                raise aiohttp.ClientResponseError(info, (), status=412, message="conditionNotMet")  # type: ignore[arg-type]
        return await real_send(method, url, ok, **kwargs)

    from app.storage.base import CompleteOptions  # here, so the module's other tests also run against old code

    monkeypatch.setattr(store.client, "send", send_as_gcs)
    create_only = CompleteOptions(create_only=True)
    try:
        path = ArtifactPath("d/model.bin")
        upload = await store.create_multipart_upload(path, 1)
        async with httpx.AsyncClient(timeout=60) as http:
            part = await http.put(upload.credentials[0].url, content=b"late")
        assert part.status_code == 200, part.text
        await store.write(path, stream(b"first"), None)
        done = [CompletedPart(1, part.headers.get("etag", ""))]
        with pytest.raises(AlreadyExists):
            await store.complete_multipart_upload(path, upload.upload_id, done, create_only)
        assert conditional, "the final compose did not ask for ifGenerationMatch=0"
        assert await staged("gcs", store, path.canonical, upload.upload_id) is False
        with pytest.raises(ResourceNotFound):  # its retry: the object there is not the one it would have built
            await store.complete_multipart_upload(path, upload.upload_id, done, create_only)
        assert await read_all(store, "d/model.bin") == b"first"
    finally:
        await store.close()


# the local destination's own part URLs ---------------------------------------------------------------------------
PART_LIMIT = 1000  # ARTIFACT_PROXY_MAX_UPLOAD_SIZE of the local proxy below
MULTIPART_ABOVE = 500  # its ARTIFACT_PROXY_PRESIGNED_ONLY_MIN_SIZE


@dataclass
class Local:
    proxy: Proxy
    root: Path
    audit: Path


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    base = tmp_path_factory.mktemp("policy-local")
    root, audit = base / "root", base / "audit.log"
    env = {
        "ARTIFACT_PROXY_MAX_UPLOAD_SIZE": str(PART_LIMIT),
        "ARTIFACT_PROXY_PRESIGNED_ONLY_MIN_SIZE": str(MULTIPART_ABOVE),
        "ARTIFACT_PROXY_UPLOAD_IDLE_TIMEOUT": "1",
    }
    with running_proxy(str(root), base / "proxy", env=env, extra_args=["--audit-log", str(audit)]) as proxy:
        yield Local(proxy, root, audit)


def raw_put(url: str, headers: dict[str, str], body: bytes = b"") -> RawResponse:
    """PUT with exactly these headers and body bytes (Content-Length may promise more than is sent)."""
    parts = urlsplit(url)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n{lines}\r\n".encode() + body)
        return read_response(sock, "PUT")


def staged_parts(local: Local, upload_id: str) -> list[str]:
    return sorted(name for name in os.listdir(local.root / STAGING_DIR / upload_id) if name != "target")


def wait_until_idle(proxy: Proxy) -> None:
    wait_until(lambda: proxy.requests_in_flight() == 0, PATIENCE, "the service to finish every request")


def test_a_part_announced_over_the_limit_is_413_before_its_body_is_read(local: Local) -> None:
    upload = started(local.proxy, "d/announced.bin")
    # 77 MB announced, not one byte sent: the answer can only come before the body is read.
    refused = raw_put(upload["credentials"][0]["url"], {"Content-Length": str(77_000_000)})
    assert refused.status == 413, refused
    assert json.loads(refused.body)["message"] == f"Upload of 77000000 bytes exceeds the limit of {PART_LIMIT} bytes"
    assert staged_parts(local, upload["upload_id"]) == []


def test_a_chunked_part_over_the_limit_is_413_and_not_stored(local: Local) -> None:
    upload = started(local.proxy, "d/chunked.bin")

    def body() -> Iterator[bytes]:  # a generator: httpx sends it chunked, announcing no length
        yield b"x" * 600
        yield b"x" * 600

    refused = httpx.put(upload["credentials"][0]["url"], content=body(), timeout=60)
    assert refused.status_code == 413, refused.text
    assert refused.json()["message"] == f"Upload exceeds the limit of {PART_LIMIT} bytes"
    wait_until_idle(local.proxy)
    assert staged_parts(local, upload["upload_id"]) == []
    assert [p for p in (local.root / STAGING_DIR / upload["upload_id"]).iterdir() if p.suffix == ".tmp"] == []


def test_a_stalled_part_is_abandoned_with_408(local: Local) -> None:
    upload = started(local.proxy, "d/stalled.bin")
    stalled = raw_put(upload["credentials"][0]["url"], {"Content-Length": "900"}, b"y" * 300)  # then silence
    assert stalled.status == 408, stalled
    assert json.loads(stalled.body)["error_code"] == "DEADLINE_EXCEEDED"
    wait_until_idle(local.proxy)
    assert staged_parts(local, upload["upload_id"]) == []


def test_an_interrupted_part_is_not_stored_and_is_no_server_error(local: Local) -> None:
    upload = started(local.proxy, "d/interrupted.bin")
    parts = urlsplit(upload["credentials"][0]["url"])
    wait_until_idle(local.proxy)  # so the one in flight below is this one
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        head = f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: 900\r\n\r\n"
        sock.sendall(head.encode() + b"z" * 300)
        local.proxy.wait_in_flight(1)  # the part is inside the app, its body a third sent: hanging up interrupts it
    wait_until_idle(local.proxy)
    assert staged_parts(local, upload["upload_id"]) == []
    assert "unhandled error" not in local.proxy.log()


def test_parts_within_the_limit_are_stored_but_not_a_total_over_it(local: Local) -> None:
    path = "d/total.bin"
    upload = started(local.proxy, path, 2)
    parts = put_parts(upload, [b"a" * 600, b"b" * 600])  # 600 each: under the limit, and parts are not proxied PUTs
    refused = complete(local.proxy, path, upload, parts)
    assert refused.status_code == 413, refused.text
    assert not (local.root / "d" / "total.bin").exists()
    assert not (local.root / STAGING_DIR / upload["upload_id"]).exists()


def test_a_chunked_put_over_the_presigned_only_size_is_refused_and_leaves_nothing(local: Local) -> None:
    def body() -> Iterator[bytes]:
        yield b"x" * 300
        yield b"x" * 300

    refused = httpx.put(local.proxy.artifact_url("chunked/big.bin"), content=body(), timeout=60)
    assert refused.status_code == 403, refused.text  # MLflow 3.18's presigned-only refusal (test_presigned_only.py)
    assert refused.json()["artifacts_presigned_only"] is True
    assert refused.json()["message"].startswith(f"This server requires artifacts over {MULTIPART_ABOVE} bytes")
    wait_until_idle(local.proxy)
    assert not (local.root / "chunked" / "big.bin").exists()
    assert [p for p in local.root.rglob(f"{TEMP_PREFIX}*") if not p.is_relative_to(local.root / STAGING_DIR)] == []

    def small() -> Iterator[bytes]:
        yield b"y" * 250
        yield b"y" * 250

    assert httpx.put(local.proxy.artifact_url("chunked/small.bin"), content=small(), timeout=60).status_code == 200
    assert (local.root / "chunked" / "small.bin").read_bytes() == b"y" * 500


# signed URLs: strict parsing and audit lines -----------------------------------------------------------------------
MALFORMED = {"error_code": "PERMISSION_DENIED", "message": "Missing or malformed URL signature"}


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def signed_download_url(local: Local, path: str, content: bytes) -> str:
    assert httpx.put(local.proxy.artifact_url(path), content=content, timeout=60).status_code == 200
    url: str = httpx.get(f"{local.proxy.api}/presigned/{path}", timeout=60).json()["url"]
    return url


@pytest.mark.parametrize("expires", ["¹", "9" * 5000, "٣"])
def test_a_malformed_expiry_is_403(local: Local, expires: str) -> None:
    url = signed_download_url(local, "signed/expiry.txt", b"e")
    download = httpx.get(with_query(url, expires=expires), timeout=60)
    assert (download.status_code, download.json()) == (403, MALFORMED)
    upload = started(local.proxy, "signed/part.bin")
    part = httpx.put(with_query(upload["credentials"][0]["url"], expires=expires), content=b"p", timeout=60)
    assert (part.status_code, part.json()) == (403, MALFORMED)


def test_a_non_ascii_signature_is_403(local: Local) -> None:
    url = signed_download_url(local, "signed/sig.txt", b"s")
    download = httpx.get(with_query(url, sig="é" * 64), timeout=60)
    assert (download.status_code, download.json()) == (403, MALFORMED)


def test_a_forged_giant_part_number_is_403(local: Local) -> None:
    upload = started(local.proxy, "signed/giant.bin")
    parts = urlsplit(upload["credentials"][0]["url"])
    forged = urlunsplit(parts._replace(path=parts.path.rsplit("/", 1)[0] + "/" + "9" * 5000))
    refused = httpx.put(forged, content=b"p", timeout=60)
    assert (refused.status_code, refused.json()["error_code"]) == (403, "PERMISSION_DENIED")


def audit_entries(local: Local, matches: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The audit lines that `matches`, once there is one: a line is written just after its response is sent."""
    deadline = time.monotonic() + PATIENCE
    while True:
        text = local.audit.read_text() if local.audit.exists() else ""
        found = [entry for entry in map(json.loads, text.splitlines()) if matches(entry)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_signed_downloads_are_audited(local: Local) -> None:
    url = signed_download_url(local, "audit/f.txt", b"audited")
    assert httpx.get(url, timeout=60).content == b"audited"
    assert httpx.get(with_query(url, sig="0" * 64), timeout=60).status_code == 403

    def signed(status: int) -> Callable[[dict[str, Any]], bool]:
        return lambda e: (e["path"], e["user"], e["status"]) == ("audit/f.txt", "signed-url", status)

    assert [(e["op"], e["bytes_out"]) for e in audit_entries(local, signed(200))] == [("read", len(b"audited"))]
    assert [e["op"] for e in audit_entries(local, signed(403))] == ["read"]


def test_part_puts_are_audited_with_their_upload(local: Local) -> None:
    upload = started(local.proxy, "audit/m.bin")
    put_parts(upload, [b"part one"])
    tampered = httpx.put(with_query(upload["credentials"][0]["url"], sig="0" * 64), content=b"x", timeout=60)
    assert tampered.status_code == 403
    written = audit_entries(local, lambda e: e.get("upload_id") == upload["upload_id"] and e["status"] == 200)
    assert [(e["op"], e["path"], e["user"], e["part_number"], e["bytes_in"]) for e in written] == [
        ("write", "audit/m.bin", "signed-url", 1, len(b"part one"))
    ]
    denied = audit_entries(local, lambda e: e.get("upload_id") == upload["upload_id"] and e["status"] == 403)
    assert [(e["op"], e["path"], e["user"]) for e in denied] == [("write", None, "signed-url")]
