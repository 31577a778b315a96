"""The `path` in an mpu body names the file, as MLflow 3.18 reads it (wire spec §10): `ntpath.basename`, so the
local paths of older clients, Windows ones included, keep working, and what is left must be a real name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.utils import multipart
from tests.utils.proxy import Proxy, running_proxy


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Path]]:
    root = tmp_path_factory.mktemp("root")
    with running_proxy(str(root), tmp_path_factory.mktemp("proxy")) as proxy:
        yield proxy, root


@pytest.mark.parametrize(
    ("body_path", "stored"),
    [
        ("model.bin", "model.bin"),  # what a 3.18 client sends
        ("/data/run/model.bin", "model.bin"),  # a 3.17 client's absolute local path
        ("C:\\Users\\me\\win.bin", "win.bin"),  # a Windows client's
        ("C:drive-relative.bin", "drive-relative.bin"),
    ],
)
def test_only_the_name_is_used(local: tuple[Proxy, Path], body_path: str, stored: str) -> None:
    proxy, root = local
    done = multipart.upload(proxy.api, "runs/1", body_path, [b"part bytes"])
    assert done.status_code == 200, done.text
    assert (root / "runs" / "1" / stored).read_bytes() == b"part bytes"


@pytest.mark.parametrize("body_path", ["C:\\Users\\me\\..", "C:\\Users\\me\\", "C:", ".", "..", "dir/", "src%5C.."])
@pytest.mark.parametrize("route", ["create", "complete", "abort"])
def test_no_name_left_is_an_invalid_path(local: tuple[Proxy, Path], body_path: str, route: str) -> None:
    proxy, root = local
    body = {"path": body_path, "num_parts": 1, "upload_id": "u", "parts": [{"part_number": 1, "etag": "e"}]}
    response = httpx.post(f"{proxy.api}/mpu/{route}/runs/2", json=body, timeout=60)
    assert (response.status_code, response.json()) == (
        400,
        {"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid path"},
    )
    assert not (root / "runs" / "2").exists()
