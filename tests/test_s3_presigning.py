"""S3 presigned transfers as MLflow 3.18 makes them (wire spec §10), against SeaweedFS, which verifies SigV4:
CreateMultipartUpload gets MLFLOW_S3_UPLOAD_EXTRA_ARGS and a Content-Type; args S3 needs on every later request
(requester pays) are signed into the part and download URLs and handed to the client as `headers`; an SSE-C key
or a checksum algorithm rules presigning out (501, server-info false, never a key in a URL); presigned GETs ask
for `Content-Encoding: identity`."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.servers import StorageServer, free_port
from tests.servers.s3 import BUCKET, boto3_client, seaweedfs_server
from tests.utils import multipart
from tests.utils.proxy import Proxy, running_proxy

MiB = 1024 * 1024
SSE_C_KEY = "k" * 32  # 256 bits, as SSE-C requires
UNAVAILABLE = (
    "Multipart upload is not supported for the current artifact repository. "
    "Presigned artifact transfers are unavailable."
)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


def proxy_with(seaweed: StorageServer, work: Path, extra_args: dict[str, Any]) -> AbstractContextManager[Proxy]:
    """The service over a fresh prefix of the bucket, with these MLFLOW_S3_UPLOAD_EXTRA_ARGS."""
    destination = f"{seaweed.destination}/{uuid.uuid4().hex[:12]}"
    environment = {**seaweed.env, "MLFLOW_S3_UPLOAD_EXTRA_ARGS": json.dumps(extra_args)}
    return running_proxy(destination, work, env=environment)


def key_of(proxy: Proxy, path: str) -> str:
    return f"{proxy.destination.removeprefix(f's3://{BUCKET}/')}/{path}"


def head(seaweed: StorageServer, proxy: Proxy, path: str, **args: Any) -> dict[str, Any]:
    response: dict[str, Any] = boto3_client(seaweed.endpoint).head_object(
        Bucket=BUCKET, Key=key_of(proxy, path), **args
    )
    return response


def test_uploads_get_a_content_type_and_the_extra_args(seaweed: StorageServer, tmp_path: Path) -> None:
    extra = {"Metadata": {"origin": "extra-args"}}
    with proxy_with(seaweed, tmp_path, extra) as proxy:
        done = multipart.upload(proxy.api, "run", "/local/metrics.json", [b"{}"])
        assert done.status_code == 200, done.text
        stored = head(seaweed, proxy, "run/metrics.json")
        # The Content-Type our own GET gives (MLflow serves .json as text/plain), so presigned GETs agree with it.
        assert (stored["ContentType"], stored["Metadata"]) == ("text/plain", {"origin": "extra-args"})
        assert httpx.put(proxy.artifact_url("run/plot.png"), content=b"png", timeout=60).status_code == 200
        assert head(seaweed, proxy, "run/plot.png")["ContentType"] == "image/png"
    with proxy_with(seaweed, tmp_path, {"ContentType": "application/x-mine"}) as proxy:  # the operator's wins
        assert multipart.upload(proxy.api, "run", "model.pkl", [b"m"]).status_code == 200
        assert head(seaweed, proxy, "run/model.pkl")["ContentType"] == "application/x-mine"


@pytest.mark.parametrize(
    ("extra", "headers"),
    [
        ({"RequestPayer": "requester"}, {"x-amz-request-payer": "requester"}),
        (
            {"RequestPayer": "requester", "ExpectedBucketOwner": "123456789012", "Metadata": {"m": "1"}},
            {"x-amz-request-payer": "requester", "x-amz-expected-bucket-owner": "123456789012"},
        ),
    ],
    ids=["requester-pays", "and-bucket-owner"],
)
def test_args_every_request_needs_travel_signed_in_the_credentials(
    seaweed: StorageServer, tmp_path: Path, extra: dict[str, Any], headers: dict[str, str]
) -> None:
    with proxy_with(seaweed, tmp_path, extra) as proxy:
        created = multipart.create(proxy.api, "rp", "/local/big.bin", 2)
        assert created.status_code == 200, created.text
        body = created.json()
        assert [c["headers"] for c in body["credentials"]] == [headers] * 2
        url = body["credentials"][0]["url"]
        signed_headers = parse_qs(urlsplit(url).query)["X-Amz-SignedHeaders"][0].split(";")
        assert set(headers) <= set(signed_headers)
        # The header is signed: a part PUT without it is refused by the store.
        assert httpx.put(url, content=b"a" * 5 * MiB, timeout=60).status_code == 403
        parts = multipart.put_parts(body, [b"a" * 5 * MiB, b"b" * 10])
        done = multipart.complete(proxy.api, "rp", "big.bin", body, parts)
        assert done.status_code == 200, done.text
        signed = httpx.get(f"{proxy.api}/presigned/rp/big.bin", timeout=60).json()
        assert signed["headers"] == headers
        assert parse_qs(urlsplit(signed["url"]).query)["response-content-encoding"] == ["identity"]
        ranged = httpx.get(signed["url"], headers={**signed["headers"], "Range": "bytes=0-3"}, timeout=60)
        assert (ranged.status_code, ranged.content) == (206, b"aaaa")
        assert httpx.get(proxy.artifact_url("rp/big.bin"), timeout=60).content == b"a" * 5 * MiB + b"b" * 10


def test_plain_presigned_urls_need_no_headers(seaweed: StorageServer, tmp_path: Path) -> None:
    with proxy_with(seaweed, tmp_path, {}) as proxy:
        created = multipart.create(proxy.api, "plain", "x.bin").json()
        assert created["credentials"][0]["headers"] == {}
        assert multipart.abort(proxy.api, "plain", "x.bin", created).status_code == 200
        assert httpx.put(proxy.artifact_url("plain/f.txt"), content=b"f", timeout=60).status_code == 200
        signed = httpx.get(f"{proxy.api}/presigned/plain/f.txt", timeout=60).json()
        assert signed["headers"] == {}
        assert parse_qs(urlsplit(signed["url"]).query)["response-content-encoding"] == ["identity"]


@pytest.mark.parametrize(
    "extra",
    [
        {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": SSE_C_KEY},
        {"ChecksumAlgorithm": "SHA256"},
    ],
    ids=["sse-c", "checksum"],
)
def test_args_that_rule_presigning_out(seaweed: StorageServer, tmp_path: Path, extra: dict[str, str]) -> None:
    with proxy_with(seaweed, tmp_path, extra) as proxy:
        info = httpx.get(f"{proxy.url}/api/3.0/mlflow/server-info", timeout=60).json()
        flags = [
            "multipart_uploads_enabled",
            "multipart_downloads_enabled",
            "presigned_upload_run_id_supported",
            "presigned_upload_model_id_supported",
            "model_artifact_presigned_downloads_supported",
        ]
        assert [info[flag] for flag in flags] == [False] * len(flags)
        created = multipart.create(proxy.api, "x", "x.bin")
        assert (created.status_code, created.json()) == (501, {"error_code": "NOT_IMPLEMENTED", "message": UNAVAILABLE})
        assert httpx.put(proxy.artifact_url("x/f.bin"), content=b"proxied", timeout=60).status_code == 200
        presigned = httpx.get(f"{proxy.api}/presigned/x/f.bin", timeout=60)
        assert presigned.status_code == 501
        assert presigned.json()["message"].endswith("Presigned artifact transfers are unavailable.")
        # The proxied way still works, streamed in parts past 8 MiB, and the key went nowhere a client can see.
        assert httpx.get(proxy.artifact_url("x/f.bin"), timeout=60).content == b"proxied"
        big = b"s" * (9 * MiB) + b"tail"
        assert httpx.put(proxy.artifact_url("x/big.bin"), content=big, timeout=60).status_code == 200
        tail = httpx.get(proxy.artifact_url("x/big.bin"), headers={"Range": f"bytes={len(big) - 4}-"}, timeout=60)
        assert (tail.status_code, tail.content) == (206, b"tail")
        for response in (created, presigned):
            assert SSE_C_KEY not in response.text and base64.b64encode(SSE_C_KEY.encode()).decode() not in response.text
        assert proxy.logged("presigned multipart uploads and downloads are off")


def test_sse_c_cannot_be_presigned_only(seaweed: StorageServer, tmp_path: Path) -> None:
    extra = json.dumps({"SSECustomerAlgorithm": "AES256", "SSECustomerKey": SSE_C_KEY})
    environment = {
        **seaweed.env,
        "PATH": "/usr/bin:/bin",
        "MLFLOW_S3_UPLOAD_EXTRA_ARGS": extra,
        "MLFLOW_ARTIFACTS_PRESIGNED_ONLY": "true",
    }
    command = [sys.executable, "-m", "app", "server", "--port", str(free_port())]
    result = subprocess.run(
        [*command, "--artifacts-destination", seaweed.destination],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: MLFLOW_ARTIFACTS_PRESIGNED_ONLY needs a destination that presigns multipart uploads and downloads; "
        f"{seaweed.destination} does not: an SSE-C key in MLFLOW_S3_UPLOAD_EXTRA_ARGS would be disclosed to clients "
        "in presigned requests"
    ]
