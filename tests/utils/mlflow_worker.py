"""A real MLflow client in another venv, serving the test process: one JSON request per line on stdin, one JSON
answer per line on the descriptor it announces. Run by tests/utils/mlflow_clients.py with `.venv-mlflow/bin/python`
(the pinned `mlflow==` of constraints.txt), once per test session: starting Python and importing MLflow costs seconds,
a request costs what its transfers cost.

It imports nothing of the project (that venv has none of its packages): the standard library and MLflow only.

Requests (every one carries `env`, the test process's MLFLOW_* variables, which replace this process's before the
request runs, so `monkeypatch.setenv` reaches this client as it reaches the in-process one):
    {"op": "open", "kind": "http" | "mlflow-artifacts", "uri": ..., "tracking_uri": ...}   -> a repository handle
    {"op": "call", "repo": HANDLE, "method": NAME, "args": [...], "kwargs": {...}, "faults": {...}}
    {"op": "forget"}                 -> drops every repository and cached server-info answer (once per test)
Answers: {"ok": VALUE} or {"error": {"type", "message", "status", "body", "headers"}} (status and the rest for a
`requests` HTTPError: what the tests check of the response).

Faults (what the in-process client gets with monkeypatch): {"part_urls": {"2": URL}} sends multipart part 2 to URL.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import traceback
from typing import Any

# Nothing here may leave the machine: MLflow 3 sends usage telemetry by default.
FIXED_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def main() -> None:
    # Answers go on a private copy of stdout; whatever MLflow or a library prints lands on stderr (the worker's log).
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ.update(FIXED_ENV)

    import mlflow
    from mlflow.entities.multipart_upload import MultipartUploadCredential
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository
    from mlflow.utils import server_info

    repos: dict[int, Any] = {}
    handles = itertools.count(1)
    original_upload_part = HttpArtifactRepository.__dict__["_upload_part"]

    def set_env(env: dict[str, str]) -> None:
        for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
            del os.environ[name]
        os.environ.update(env)
        os.environ.update(FIXED_ENV)

    def with_faults(faults: dict[str, Any]) -> None:
        part_urls = {int(k): v for k, v in faults.get("part_urls", {}).items()}
        if not part_urls:
            HttpArtifactRepository._upload_part = original_upload_part
            return

        def upload_part(credential, local_file, size, start_byte):  # type: ignore[no-untyped-def]
            if credential.part_number in part_urls:
                url = part_urls[credential.part_number]
                credential = MultipartUploadCredential(url=url, part_number=credential.part_number, headers={})
            return original_upload_part.__func__(credential, local_file, size, start_byte)

        HttpArtifactRepository._upload_part = staticmethod(upload_part)

    def result(value: Any) -> Any:
        if isinstance(value, list):
            return [result(v) for v in value]
        if hasattr(value, "is_dir") and hasattr(value, "file_size"):  # a FileInfo
            return {"path": value.path, "is_dir": value.is_dir, "file_size": value.file_size}
        return value

    def handle(request: dict[str, Any]) -> Any:
        set_env(request.get("env", {}))
        op = request["op"]
        if op == "open":
            if request["kind"] == "http":
                repo = HttpArtifactRepository(request["uri"])
            else:
                repo = MlflowArtifactsRepository(request["uri"], tracking_uri=request["tracking_uri"])
            handle_id = next(handles)
            repos[handle_id] = repo
            return handle_id
        if op == "call":
            with_faults(request.get("faults", {}))
            try:
                method = getattr(repos[request["repo"]], request["method"])
                return result(method(*request.get("args", []), **request.get("kwargs", {})))
            finally:
                with_faults({})
        if op == "forget":
            for repo in repos.values():
                for pool in ("thread_pool", "_chunk_thread_pool"):
                    executor = getattr(repo, pool, None)
                    if executor is not None:
                        executor.shutdown(wait=False)
            repos.clear()
            server_info._clear_server_info_cache()  # cached 60 s per host: each test asks afresh
            return None
        raise ValueError(f"unknown op {op!r}")

    keys = sorted(
        v for k, v in vars(server_info).items() if k.startswith("SERVER_INFO_") and k != "SERVER_INFO_ENDPOINT"
    )
    answers.write(json.dumps({"ready": True, "version": mlflow.__version__, "server_info_keys": keys}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer: dict[str, Any] = {"ok": handle(request)}
        except Exception as exc:  # every failure goes back to the test, which re-raises it
            traceback.print_exc()
            response = getattr(exc, "response", None)
            answer = {
                "error": {
                    "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                    "mro": [f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__],
                    "message": str(exc),
                    "status": getattr(response, "status_code", None),
                    "body": getattr(response, "text", None),
                    "headers": dict(getattr(response, "headers", None) or {}),
                }
            }
        answers.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
