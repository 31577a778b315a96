"""The two real MLflow clients the tests drive, behind one interface, so one test body runs with both.

- `mlflow-skinny` (the `mlflow-skinny==` pin of constraints.txt) is imported here, in the test process.
- `mlflow` (the `mlflow==` pin, the newer client) lives in `.venv-mlflow` (deploy/setup-mlflow-venv.sh): it runs in
  one worker process per test session (tests/utils/mlflow_worker.py), which this module starts and talks JSON to.

Either client hands out repositories with the methods the tests use (`log_artifact`, `log_artifacts`,
`list_artifacts`, `download_artifacts`, `delete_artifacts`); the worker's return `mlflow.entities.FileInfo` and raise
`requests.HTTPError` (with the status, headers and body of the response) or `MlflowException` as the in-process ones
do. Environment variables set by the test (`monkeypatch.setenv("MLFLOW_...")`) reach the worker with every call.
A client that is missing or reports another version than its pin fails the test: it is never skipped.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_VENV = Path(os.environ.get("MLFLOW_VENV", ROOT / ".venv-mlflow"))
WORKER = Path(__file__).with_name("mlflow_worker.py")
# The longest a single client call may take: transfers here are tens of MiB on loopback, so minutes means a hang.
CALL_TIMEOUT = 300.0
START_TIMEOUT = 120.0  # starting Python and importing the full MLflow takes seconds, more on a loaded machine


class ClientSetupError(RuntimeError):
    """A client is missing or is not the pinned version: `make test` installs both."""


def pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].split(";")[0].strip()
    raise ClientSetupError(f"constraints.txt pins no {name}==VERSION")


IN_PROCESS_VERSION = pinned("mlflow-skinny")
WORKER_VERSION = pinned("mlflow")
VERSIONS = list(dict.fromkeys([IN_PROCESS_VERSION, WORKER_VERSION]))  # each client once, in-process first


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3])


class RemoteError(Exception):
    """An exception of a type the test process does not rebuild, raised in the worker."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


def _rebuild(error: dict[str, Any]) -> Exception:
    import requests
    from mlflow.exceptions import MlflowException
    from requests.structures import CaseInsensitiveDict

    if "requests.exceptions.HTTPError" in error["mro"] and error["status"] is not None:
        response = requests.Response()
        response.status_code = error["status"]
        response._content = (error["body"] or "").encode()
        response.headers = CaseInsensitiveDict(error["headers"])
        response.encoding = "utf-8"
        return requests.HTTPError(error["message"], response=response)
    if "mlflow.exceptions.MlflowException" in error["mro"]:
        return MlflowException(error["message"])
    return RemoteError(error["type"], error["message"])


def _mlflow_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith("MLFLOW_")}


def _server_info_keys(module: Any) -> list[str]:
    return sorted(
        value
        for name, value in vars(module).items()
        if name.startswith("SERVER_INFO_") and name != "SERVER_INFO_ENDPOINT"
    )


class Worker:
    """The worker process: started on first use, restarted after it dies (a test that crashed it fails alone)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_path = log_dir / "mlflow-worker.log"
        self.process: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}
        self.setup_error: str | None = None  # a missing or mis-versioned client fails every later test at once

    def _start(self) -> None:
        if self.setup_error is not None:
            raise ClientSetupError(self.setup_error)
        python = MLFLOW_VENV / "bin" / "python"
        if not python.exists():
            self.setup_error = (
                f"{python} is missing: the MLflow {WORKER_VERSION} client lives in its own venv; create it with "
                "`bash deploy/setup-mlflow-venv.sh` (`make test` does)"
            )
            raise ClientSetupError(self.setup_error)
        env = {**os.environ, "PYTHONPATH": "", "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [str(python), str(WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=self.log_path.parent,
                start_new_session=True,
            )
        self.info = self._read(START_TIMEOUT, "start")
        if self.info.get("version") != WORKER_VERSION:
            self.stop()
            self.setup_error = (
                f"{MLFLOW_VENV} runs MLflow {self.info.get('version')}, not the pinned {WORKER_VERSION}: "
                "run `bash deploy/setup-mlflow-venv.sh` (`make test` does)"
            )
            raise ClientSetupError(self.setup_error)

    def _read(self, timeout: float, what: str) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-4000:]
            problem = "died" if ready else f"did not answer within {timeout:.0f} s"
            raise RuntimeError(f"the MLflow {WORKER_VERSION} worker {problem} ({what}); its log:\n{tail}")
        return dict(json.loads(line))

    def request(self, request: dict[str, Any]) -> Any:
        if self.process is None or self.process.poll() is not None:
            self._start()
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps({**request, "env": _mlflow_env()}) + "\n")
        self.process.stdin.flush()
        answer = self._read(CALL_TIMEOUT, request.get("method") or request["op"])
        if "error" in answer:
            raise _rebuild(answer["error"])
        return answer["ok"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None


class WorkerRepo:
    """An artifact repository living in the worker, with the methods of MLflow's."""

    def __init__(self, client: WorkerClient, handle: int) -> None:
        self._client = client
        self._handle = handle

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        request = {"op": "call", "repo": self._handle, "method": method, "args": args, "kwargs": kwargs}
        return self._client.worker.request({**request, "faults": self._client.faults})

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        self._call("log_artifact", local_file, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self._call("log_artifacts", local_dir, artifact_path)

    def list_artifacts(self, path: str | None = None) -> list[Any]:
        from mlflow.entities import FileInfo

        return [FileInfo(f["path"], f["is_dir"], f["file_size"]) for f in self._call("list_artifacts", path)]

    def download_artifacts(self, artifact_path: str, dst_path: str | None = None) -> str:
        return str(self._call("download_artifacts", artifact_path, dst_path))

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        self._call("delete_artifacts", artifact_path)


class ArtifactClient(ABC):
    """One of the two MLflow clients: `version` says which; artifact repositories come from `http_repo` and
    `mlflow_artifacts_repo`."""

    version: str

    def at_least(self, version: str) -> bool:
        """Whether this client is `version` or later (e.g. "3.18": the behaviours of wire spec §10)."""
        return version_tuple(self.version) >= version_tuple(version)

    @abstractmethod
    def http_repo(self, url: str) -> Any:
        """An `HttpArtifactRepository` on an http(s) artifact root."""

    @abstractmethod
    def mlflow_artifacts_repo(self, uri: str, tracking_uri: str) -> Any:
        """A `MlflowArtifactsRepository` on an `mlflow-artifacts:` URI."""

    @abstractmethod
    def server_info_keys(self) -> list[str]:
        """The server-info keys this client's MLflow names (mlflow.utils.server_info)."""

    @abstractmethod
    def part_urls(self, urls: dict[int, str]) -> AbstractContextManager[None]:
        """While inside, the client sends multipart part N to urls[N] (a fault: a part whose transfer fails)."""

    @abstractmethod
    def close(self) -> None:
        """Release what the test's repositories hold."""

    def __repr__(self) -> str:
        return f"mlflow-{self.version}"


class InProcessClient(ArtifactClient):
    def __init__(self) -> None:
        import mlflow

        if mlflow.__version__ != IN_PROCESS_VERSION:
            raise ClientSetupError(
                f"the project venv has mlflow-skinny {mlflow.__version__}, not the pinned {IN_PROCESS_VERSION}: "
                "`make test` installs it"
            )
        self.version = mlflow.__version__
        from mlflow.utils import server_info

        server_info._clear_server_info_cache()  # its answers are cached 60 s per host: each test asks afresh

    def http_repo(self, url: str) -> Any:
        from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

        return HttpArtifactRepository(url)

    def mlflow_artifacts_repo(self, uri: str, tracking_uri: str) -> Any:
        from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

        return MlflowArtifactsRepository(uri, tracking_uri=tracking_uri)

    def server_info_keys(self) -> list[str]:
        from mlflow.utils import server_info

        return _server_info_keys(server_info)

    @contextmanager
    def part_urls(self, urls: dict[int, str]) -> Iterator[None]:
        from mlflow.entities.multipart_upload import MultipartUploadCredential
        from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

        original = HttpArtifactRepository.__dict__["_upload_part"]

        def upload_part(credential, local_file, size, start_byte):  # type: ignore[no-untyped-def]
            if credential.part_number in urls:
                url = urls[credential.part_number]
                credential = MultipartUploadCredential(url=url, part_number=credential.part_number, headers={})
            return original.__func__(credential, local_file, size, start_byte)

        HttpArtifactRepository._upload_part = staticmethod(upload_part)
        try:
            yield
        finally:
            HttpArtifactRepository._upload_part = original

    def close(self) -> None:
        pass  # its repositories are plain objects of this process


class WorkerClient(ArtifactClient):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.faults: dict[str, Any] = {}
        worker.request({"op": "forget"})  # starts the worker if needed, and checks its version
        self.version = str(worker.info["version"])

    def http_repo(self, url: str) -> WorkerRepo:
        return WorkerRepo(self, self.worker.request({"op": "open", "kind": "http", "uri": url}))

    def mlflow_artifacts_repo(self, uri: str, tracking_uri: str) -> WorkerRepo:
        request = {"op": "open", "kind": "mlflow-artifacts", "uri": uri, "tracking_uri": tracking_uri}
        return WorkerRepo(self, self.worker.request(request))

    def server_info_keys(self) -> list[str]:
        return list(self.worker.info["server_info_keys"])

    @contextmanager
    def part_urls(self, urls: dict[int, str]) -> Iterator[None]:
        self.faults = {"part_urls": {str(k): v for k, v in urls.items()}}
        try:
            yield
        finally:
            self.faults = {}

    def close(self) -> None:
        if self.worker.process is not None:
            self.worker.request({"op": "forget"})


def make_client(version: str, worker: Worker | None) -> ArtifactClient:
    if version == IN_PROCESS_VERSION:
        return InProcessClient()
    assert worker is not None
    return WorkerClient(worker)
