"""The MLflow client half of the stack: log and load a model THROUGH the tracking server, bytes through artifact-proxy.

Run with the full `mlflow` package (pyfunc needs numpy/pandas/cloudpickle), e.g. `.venv-mlflow/bin/python`:

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 .venv-mlflow/bin/python deploy/mlflow_client_demo.py

Used by `docker compose` (the `client` service), `bash deploy/stack.sh --demo` and tests/test_stack.py. It exits
non-zero on any mismatch and prints one JSON line (ids and URIs) last, for callers to check the storage side.

    MLFLOW_TRACKING_URI      the tracking server (required)
    EXPECTED_ARTIFACT_ROOT   if set, the new experiment's artifact location must start with it
    DEMO_EXPERIMENT          experiment name [default: artifact-proxy-demo-<random>]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient


class AddN(PythonModel):
    """A tiny pyfunc model: adds `n` to every value."""

    def __init__(self, n: int) -> None:
        self.n = n

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 (MLflow's signature)
        return model_input + self.n


def check(condition: bool, message: str) -> None:
    if not condition:
        print(f"demo: FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    name = os.environ.get("DEMO_EXPERIMENT") or f"artifact-proxy-demo-{uuid.uuid4().hex[:8]}"
    experiment_id = mlflow.create_experiment(name)
    location = client.get_experiment(experiment_id).artifact_location
    expected_root = os.environ.get("EXPECTED_ARTIFACT_ROOT")
    if expected_root:
        check(
            location == f"{expected_root.rstrip('/')}/{experiment_id}",
            f"artifact location {location!r} is not under {expected_root!r}",
        )
    print(f"demo: experiment {experiment_id} ({name}) stores artifacts at {location}", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hello = work / "hello.txt"
        hello.write_text("hello from the MLflow client\n")
        blob = work / "data" / "blob.bin"
        blob.parent.mkdir()
        blob.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several proxy chunks, an odd size

        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_param("n", 3)
            mlflow.log_metric("answer", 42)
            mlflow.log_artifact(str(hello))
            mlflow.log_artifacts(str(blob.parent), artifact_path="data")
            mlflow.log_dict({"a": 1}, "config/settings.json")
            # pip_requirements given: skips requirement inference (a slow subprocess that reloads the model).
            info = mlflow.pyfunc.log_model(name="model", python_model=AddN(3), pip_requirements=["mlflow"])
        run_id = run.info.run_id
        artifact_uri = run.info.artifact_uri
        check(artifact_uri == f"{location}/{run_id}/artifacts", f"unexpected run artifact URI {artifact_uri!r}")

        # Load the model back (its files come from artifact-proxy) and predict.
        model = mlflow.pyfunc.load_model(info.model_uri)
        prediction = model.predict(pd.DataFrame({"x": [1, 2, 3]}))
        check(list(prediction["x"]) == [4, 5, 6], f"unexpected prediction {prediction!r}")

        # Listing and downloading, through the tracking server's artifact URIs.
        top = sorted(f.path for f in client.list_artifacts(run_id))
        check(top == ["config", "data", "hello.txt"], f"unexpected listing {top}")
        out = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=str(work / "dl")))
        check((out / "hello.txt").read_text() == hello.read_text(), "hello.txt differs after download")
        check(sha256(out / "data" / "blob.bin") == sha256(blob), "data/blob.bin differs after download")
        check(json.loads((out / "config" / "settings.json").read_text()) == {"a": 1}, "settings.json differs")

    logged = mlflow.get_logged_model(info.model_id)
    print(f"demo: ok: run {run_id}, model {info.model_id} predicted {list(prediction['x'])}", file=sys.stderr)
    print(
        json.dumps(
            {
                "experiment_id": experiment_id,
                "experiment_location": location,
                "run_id": run_id,
                "run_artifact_uri": artifact_uri,
                "model_id": info.model_id,
                "model_uri": info.model_uri,
                "model_artifact_location": logged.artifact_location,
                "mlflow_version": mlflow.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
