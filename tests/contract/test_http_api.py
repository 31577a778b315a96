"""The HTTP contract (wire spec §1.3, §2.3, §5), run unchanged against every backend."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.utils.proxy import Proxy


def put(http: httpx.Client, path: str, data: bytes) -> httpx.Response:
    return http.put(f"/artifacts/{path}", content=data)


def test_put_then_get_round_trips_bytes(http: httpx.Client, prefix: str) -> None:
    data = os.urandom(100_000)
    assert put(http, f"{prefix}/model/weights.bin", data).status_code == 200
    response = http.get(f"/artifacts/{prefix}/model/weights.bin")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == "attachment; filename=weights.bin"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["etag"]


def test_put_answers_empty_json_object(http: httpx.Client, prefix: str) -> None:
    response = put(http, f"{prefix}/a.txt", b"hello")
    assert response.status_code == 200
    assert response.json() == {}


def test_chunked_upload_without_content_length(http: httpx.Client, prefix: str) -> None:
    pieces = [os.urandom(300_000) for _ in range(5)]

    def body():  # a generator makes httpx send Transfer-Encoding: chunked
        yield from pieces

    response = http.put(f"/artifacts/{prefix}/chunked.bin", content=body())
    assert response.status_code == 200
    assert http.get(f"/artifacts/{prefix}/chunked.bin").content == b"".join(pieces)


def test_empty_file_round_trips(http: httpx.Client, prefix: str) -> None:
    assert put(http, f"{prefix}/empty.txt", b"").status_code == 200
    response = http.get(f"/artifacts/{prefix}/empty.txt")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "0"


def test_overwrite_replaces_content(http: httpx.Client, prefix: str) -> None:
    put(http, f"{prefix}/v.txt", b"first version")
    put(http, f"{prefix}/v.txt", b"second")
    assert http.get(f"/artifacts/{prefix}/v.txt").content == b"second"


def test_head_returns_headers_without_body(http: httpx.Client, prefix: str) -> None:
    put(http, f"{prefix}/h.json", b'{"a": 1}')
    response = http.head(f"/artifacts/{prefix}/h.json")
    assert response.status_code == 200
    assert response.headers["content-length"] == "8"
    assert response.headers["content-type"] == "text/plain"
    assert response.content == b""


@pytest.mark.parametrize(
    ("header", "status", "expected", "content_range"),
    [
        ("bytes=0-9", 206, slice(0, 10), "bytes 0-9/1000"),
        ("bytes=990-", 206, slice(990, 1000), "bytes 990-999/1000"),
        ("bytes=-5", 206, slice(995, 1000), "bytes 995-999/1000"),
        ("bytes=500-5000", 206, slice(500, 1000), "bytes 500-999/1000"),
        ("bytes=0-1,5-6", 200, slice(0, 1000), None),
        ("items=0-1", 200, slice(0, 1000), None),
    ],
)
def test_range_requests(
    http: httpx.Client, prefix: str, header: str, status: int, expected: slice, content_range: str | None
) -> None:
    data = os.urandom(1000)
    put(http, f"{prefix}/r.bin", data)
    response = http.get(f"/artifacts/{prefix}/r.bin", headers={"Range": header})
    assert response.status_code == status
    assert response.content == data[expected]
    assert response.headers.get("content-range") == content_range


def test_unsatisfiable_range_is_416(http: httpx.Client, prefix: str) -> None:
    put(http, f"{prefix}/r.bin", b"x" * 10)
    response = http.get(f"/artifacts/{prefix}/r.bin", headers={"Range": "bytes=10-20"})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */10"
    # MLflow's error JSON, said to be JSON: not with the artifact's Content-Type or as an attachment.
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "content-disposition" not in response.headers
    head = http.head(f"/artifacts/{prefix}/r.bin", headers={"Range": "bytes=10-20"})
    assert (head.status_code, head.headers["content-type"]) == (416, "application/json")


def test_if_range_with_stale_etag_sends_whole_file(http: httpx.Client, prefix: str) -> None:
    put(http, f"{prefix}/r.bin", b"0123456789")
    etag = http.head(f"/artifacts/{prefix}/r.bin").headers["etag"]
    fresh = http.get(f"/artifacts/{prefix}/r.bin", headers={"Range": "bytes=2-3", "If-Range": etag})
    assert (fresh.status_code, fresh.content) == (206, b"23")
    stale = http.get(f"/artifacts/{prefix}/r.bin", headers={"Range": "bytes=2-3", "If-Range": '"stale"'})
    assert (stale.status_code, stale.content) == (200, b"0123456789")


def test_list_one_level_with_basenames_and_sizes(http: httpx.Client, prefix: str) -> None:
    put(http, f"{prefix}/MLmodel", b"flavors: {}\n")
    put(http, f"{prefix}/sub/deep/x.txt", b"x")
    response = http.get("/artifacts", params={"path": prefix})
    assert response.status_code == 200
    files = sorted(response.json()["files"], key=lambda f: f["path"])
    assert files == [
        {"path": "MLmodel", "is_dir": False, "file_size": 12},
        {"path": "sub", "is_dir": True},
    ]


@pytest.mark.parametrize("suffix", ["/missing", "/file.txt", ""])
def test_list_of_missing_path_or_file_is_empty_object(http: httpx.Client, prefix: str, suffix: str) -> None:
    put(http, f"{prefix}/file.txt", b"x")
    target = f"{prefix}{suffix}" if suffix else f"{prefix}-nothing-here"
    response = http.get("/artifacts", params={"path": target})
    assert response.status_code == 200
    assert response.json() == {}


def test_list_first_path_value_wins(http: httpx.Client, prefix: str) -> None:
    put(http, f"{prefix}/a/one.txt", b"1")
    response = http.get(f"/artifacts?path={prefix}/a&path={prefix}/b")
    assert [f["path"] for f in response.json()["files"]] == ["one.txt"]


def test_get_missing_is_404_in_mlflow_shape(http: httpx.Client, prefix: str) -> None:
    response = http.get(f"/artifacts/{prefix}/nope.txt")
    assert response.status_code == 404
    assert response.json() == {
        "error_code": "RESOURCE_DOES_NOT_EXIST",
        "message": f"No such artifact: '{prefix}/nope.txt'",
    }


def test_get_directory_is_400(http: httpx.Client, prefix: str) -> None:
    put(http, f"{prefix}/dir/file.txt", b"x")
    response = http.get(f"/artifacts/{prefix}/dir")
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert http.get("/artifacts/").status_code == 400


@pytest.mark.parametrize("path", ["dir/", ""])
def test_put_without_filename_is_400(http: httpx.Client, prefix: str, path: str) -> None:
    response = put(http, f"{prefix}/{path}" if path else "", b"x")
    assert response.status_code == 400
    assert response.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "Artifact path must include a filename (cannot end with '/').",
    }


def test_delete_file_and_tree(http: httpx.Client, prefix: str) -> None:
    put(http, f"{prefix}/keep.txt", b"k")
    put(http, f"{prefix}/gone.txt", b"g")
    put(http, f"{prefix}/tree/a/b.txt", b"b")
    assert http.delete(f"/artifacts/{prefix}/gone.txt").status_code == 200
    assert http.delete(f"/artifacts/{prefix}/tree/").json() == {}
    names = [f["path"] for f in http.get("/artifacts", params={"path": prefix}).json()["files"]]
    assert names == ["keep.txt"]
    assert http.get(f"/artifacts/{prefix}/tree/a/b.txt").status_code == 404


def test_delete_missing_is_200(http: httpx.Client, prefix: str) -> None:
    response = http.delete(f"/artifacts/{prefix}/never-existed")
    assert (response.status_code, response.json()) == (200, {})


@pytest.mark.parametrize("path", ["", "%2E", "%2E/", "a/%2E%2E"])
def test_delete_of_root_is_refused(http: httpx.Client, prefix: str, path: str) -> None:
    put(http, f"{prefix}/survivor.txt", b"s")
    response = http.delete(f"/artifacts/{path}")
    assert response.status_code == 400
    assert http.get(f"/artifacts/{prefix}/survivor.txt").content == b"s"


def test_equivalent_spellings_name_one_artifact(http: httpx.Client, prefix: str) -> None:
    put(http, f"{prefix}/safe/./ok.txt", b"same")
    assert http.get(f"/artifacts/{prefix}/safe//ok.txt").content == b"same"
    assert http.get(f"/artifacts/{prefix}/safe/ok.txt").content == b"same"


def test_unicode_names_get_rfc5987_disposition(http: httpx.Client, prefix: str) -> None:
    put(http, f"{prefix}/日本語.txt", b"x")
    response = http.get(f"/artifacts/{prefix}/日本語.txt")
    assert response.status_code == 200
    assert (
        response.headers["content-disposition"]
        == "attachment; filename=.txt; filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E.txt"
    )


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("a.json", "text/plain"),
        ("a.html", "text/html"),
        ("a.png", "image/png"),
        ("MLmodel", "text/plain"),
        ("a.pkl", "application/octet-stream"),
        ("a.svg", "image/svg+xml"),
    ],
)
def test_content_type_from_name_only(http: httpx.Client, prefix: str, name: str, mime: str) -> None:
    http.put(f"/artifacts/{prefix}/{name}", content=b"<x/>", headers={"Content-Type": "text/html"})
    response = http.get(f"/artifacts/{prefix}/{name}")
    assert response.headers["content-type"] == mime
    assert response.headers["content-disposition"].startswith("attachment")


def test_unknown_route_and_wrong_method_are_mlflow_json(http: httpx.Client, proxy: Proxy) -> None:
    missing = httpx.get(f"{proxy.url}/api/2.0/mlflow-artifacts/nothing")
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    wrong = httpx.post(f"{proxy.api}/artifacts/x.txt")
    assert wrong.status_code == 405
    assert wrong.json()["error_code"] == "BAD_REQUEST"
    assert "PUT" in wrong.headers["allow"]


def test_ajax_prefix_serves_the_same_store(http: httpx.Client, proxy: Proxy, prefix: str) -> None:
    put(http, f"{prefix}/ajax.txt", b"via api")
    response = httpx.get(f"{proxy.url}/ajax-api/2.0/mlflow-artifacts/artifacts/{prefix}/ajax.txt")
    assert response.content == b"via api"


def test_server_info_and_health(proxy: Proxy) -> None:
    info = httpx.get(f"{proxy.url}/api/3.0/mlflow/server-info").json()
    assert isinstance(info["multipart_uploads_enabled"], bool)
    assert isinstance(info["multipart_downloads_enabled"], bool)
    assert httpx.get(f"{proxy.url}/ajax-api/3.0/mlflow/server-info").json() == info
    assert httpx.get(f"{proxy.url}/health").text == "OK"
    assert httpx.get(f"{proxy.url}/ready").status_code == 200


def test_large_streamed_upload_round_trips(http: httpx.Client, prefix: str) -> None:
    data = os.urandom(20 * 1024 * 1024 + 123)
    assert put(http, f"{prefix}/big.bin", data).status_code == 200
    response = http.get(f"/artifacts/{prefix}/big.bin")
    assert response.headers["content-length"] == str(len(data))
    assert response.content == data
    tail = http.get(f"/artifacts/{prefix}/big.bin", headers={"Range": f"bytes={len(data) - 100}-"})
    assert tail.content == data[-100:]


def test_create_only_put_keeps_the_existing_artifact(http: httpx.Client, prefix: str) -> None:
    url = f"/artifacts/{prefix}/once.bin"
    assert http.put(url, content=b"first", headers={"If-None-Match": "*"}).status_code == 200
    refused = http.put(url, content=b"second", headers={"If-None-Match": "*"})
    assert (refused.status_code, refused.json()["error_code"]) == (409, "ALREADY_EXISTS")
    big = http.put(url, content=os.urandom(9 * 1024 * 1024), headers={"If-None-Match": "*"})
    assert big.status_code == 409
    assert http.get(url).content == b"first"


@pytest.mark.parametrize("size", [1000, 9 * 1024 * 1024])
def test_digest_mismatch_stores_nothing(http: httpx.Client, prefix: str, size: int) -> None:
    import base64
    import hashlib

    url = f"/artifacts/{prefix}/checked.bin"
    put(http, f"{prefix}/checked.bin", b"previous")
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    response = http.put(url, content=os.urandom(size), headers={"Repr-Digest": f"sha-256=:{wrong}:"})
    assert response.status_code == 400
    assert http.get(url).content == b"previous"
    data = os.urandom(size)
    right = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert http.put(url, content=data, headers={"Repr-Digest": f"sha-256=:{right}:"}).status_code == 200
    assert http.get(url).content == data


def test_server_info_tells_the_truth_about_presigning(http: httpx.Client, proxy: Proxy, prefix: str) -> None:
    info = httpx.get(f"{proxy.url}/api/3.0/mlflow/server-info").json()
    create = http.post(f"/mpu/create/{prefix}", json={"path": "/local/x.bin", "num_parts": 1})
    if info["multipart_uploads_enabled"]:
        assert create.status_code == 200
        body = {"path": "x.bin", "upload_id": create.json().get("upload_id")}
        assert http.post(f"/mpu/abort/{prefix}", json=body).status_code == 200
    else:
        assert (create.status_code, create.json()) == (
            501,
            {
                "error_code": "NOT_IMPLEMENTED",
                "message": "Multipart upload is not supported for the current artifact repository",
            },
        )
    put(http, f"{prefix}/p.txt", b"p")
    presigned = http.get(f"/presigned/{prefix}/p.txt")
    assert presigned.status_code == (200 if info["multipart_downloads_enabled"] else 501)
