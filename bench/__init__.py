"""`make bench`: artifact-proxy side by side with MLflow, nginx and a raw sink. `run.py` is the entry point."""
