"""The client half of `artifact-proxy`: `ls`, `cp`, `rm` and `verify` against any mlflow-artifacts server.

It speaks only the wire API (docs/mlflow-artifacts-api.md), so it works against this service and against
`mlflow server --artifacts-only` alike, using the extensions this service offers (recursive listings, multipart and
presigned transfers, `Repr-Digest`) when the server shows it has them.
"""
