"""`mpu/*` over plain HTTP, as the MLflow client drives it: create, PUT each part to its URL with its headers (and
nothing else), complete with the part ETags."""

from __future__ import annotations

from typing import Any

import httpx

TIMEOUT = 60


def create(api: str, directory: str, body_path: str, num_parts: int = 1) -> httpx.Response:
    return httpx.post(
        f"{api}/mpu/create/{directory}", json={"path": body_path, "num_parts": num_parts}, timeout=TIMEOUT
    )


def put_parts(created: dict[str, Any], parts: list[bytes]) -> list[dict[str, Any]]:
    """PUT each part to its credential's URL; the part list a complete names."""
    done = []
    for credential, data in zip(created["credentials"], parts, strict=True):
        response = httpx.put(credential["url"], content=data, headers=credential["headers"], timeout=TIMEOUT)
        assert response.status_code in (200, 201), response.text
        etag = response.headers.get("etag", "")
        done.append({"part_number": credential["part_number"], "etag": etag, "url": credential["url"]})
    return done


def complete(
    api: str, directory: str, body_path: str, created: dict[str, Any], parts: list[dict[str, Any]]
) -> httpx.Response:
    body = {"path": body_path, "upload_id": created.get("upload_id"), "parts": parts}
    return httpx.post(f"{api}/mpu/complete/{directory}", json=body, timeout=TIMEOUT)


def abort(api: str, directory: str, body_path: str, created: dict[str, Any]) -> httpx.Response:
    body = {"path": body_path, "upload_id": created.get("upload_id")}
    return httpx.post(f"{api}/mpu/abort/{directory}", json=body, timeout=TIMEOUT)


def upload(api: str, directory: str, body_path: str, parts: list[bytes]) -> httpx.Response:
    """The whole flow; complete's response (create's, if create refused)."""
    created = create(api, directory, body_path, len(parts))
    if created.status_code != 200:
        return created
    return complete(api, directory, body_path, created.json(), put_parts(created.json(), parts))
