"""artifact-proxy: an async, streaming server for MLflow's mlflow-artifacts REST API."""

__version__ = "0.1.0"
