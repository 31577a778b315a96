"""`mlflow server`'s flags that configure what this service is not (a tracking server, gunicorn, a plugin app).

A command line copied from `mlflow server` must run unchanged, so these are accepted and each one that was given
becomes a one-line note in the log saying why it has no effect here. `--app-name` is refused instead: ignoring it
would quietly serve without the protection the operator asked for (MLflow's `basic-auth` app).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]

# name (click's parameter name) -> (flag declarations, what it would have done and why it does nothing here)
IGNORED: dict[str, tuple[tuple[str, ...], str]] = {
    "backend_store_uri": (("--backend-store-uri",), "this server keeps no tracking data"),
    "read_replica_backend_store_uri": (("--read-replica-backend-store-uri",), "this server keeps no tracking data"),
    "registry_store_uri": (("--registry-store-uri",), "this server keeps no model registry"),
    "default_artifact_root": (("--default-artifact-root",), "set the tracking server's; here --artifacts-destination"),
    "workspace_store_uri": (("--workspace-store-uri",), "workspace paths are served as ordinary artifact paths"),
    "trace_archival_config": (("--trace-archival-config",), "trace archival belongs to the tracking server"),
    "secrets_cache_ttl": (("--secrets-cache-ttl",), "the secrets cache belongs to the tracking server"),
    "secrets_cache_max_size": (("--secrets-cache-max-size",), "the secrets cache belongs to the tracking server"),
    "gunicorn_opts": (("--gunicorn-opts",), "this server runs uvicorn with its own settings (ARTIFACT_PROXY_*)"),
    "uvicorn_opts": (("--uvicorn-opts",), "uvicorn is configured by this server's settings (ARTIFACT_PROXY_*)"),
    "waitress_opts": (("--waitress-opts",), "this server runs uvicorn with its own settings (ARTIFACT_PROXY_*)"),
}
IGNORED_SWITCHES: dict[str, tuple[tuple[str, ...], str]] = {
    "enable_workspaces": (
        ("--enable-workspaces/--disable-workspaces",),
        "workspace paths are served as ordinary artifact paths",
    ),
}


def mlflow_only_options(command: F) -> F:
    """Add the flags below to `command`; their values reach it under their names, for `notes()` and `refusal()`."""
    for name, (decls, _) in IGNORED.items():
        command = click.option(*decls, name, default=None, hidden=True)(command)
    for name, (decls, _) in IGNORED_SWITCHES.items():
        command = click.option(*decls, name, default=None, hidden=True)(command)
    command = click.option("--app-name", "app_name", default=None, hidden=True)(command)
    command = click.option("--artifacts-only", "artifacts_only", is_flag=True, help="Accepted: always artifacts only.")(
        command
    )
    command = click.option(
        "--serve-artifacts/--no-serve-artifacts", "serve_artifacts", default=None, help="Accepted for compatibility."
    )(command)
    command = click.option("--dev", "dev", is_flag=True, help="Debug logging (no auto-reload here).")(command)
    return command


def refusal(flags: dict[str, object]) -> str | None:
    if flags.pop("app_name", None):
        return (
            "--app-name: MLflow's server plugins (such as basic-auth) do not run here; "
            "protect this server with --auth-config (docs/security.md)"
        )
    return None


def notes(flags: dict[str, object]) -> list[str]:
    """One line per MLflow-only flag that was given; the flags are taken out of `flags`."""
    lines = []
    for name, (decls, why) in {**IGNORED, **IGNORED_SWITCHES}.items():
        if flags.pop(name, None) is not None:
            lines.append(f"{decls[0].split('/')[0]} is ignored: {why}")
    flags.pop("artifacts_only", None)
    if flags.pop("serve_artifacts", None) is False:
        lines.append("--no-serve-artifacts is ignored: this server always serves artifacts")
    if flags.pop("dev", False):
        lines.append("--dev: debug logging on; there is no auto-reload")
        flags["log_level"] = flags.get("log_level") or "debug"
    return lines
