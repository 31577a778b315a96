"""`artifact-proxy server ...`: `mlflow server`'s command line, so one can be swapped for the other.

The flags are a table of settings fields (`SERVER_FLAGS`): each flag's help, and the variable it is exported to for
the uvicorn workers (fresh processes that only see the environment), come from its field in `app/settings.py`.
`mlflow server`'s flags that make no sense here are in `app/mlflow_flags.py`.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import secrets
import tempfile
import typing
from collections.abc import Callable
from typing import Any

import click
import uvicorn

from app import mlflow_flags
from app.errors import ArtifactProxyError
from app.http_limits import LimitedHttpToolsProtocol
from app.logs import log_config
from app.policy import check_presigned_only
from app.settings import Settings, env_names
from app.settings_reference import effective_settings, reference
from app.storage import StoreConfigError, open_store, redacted
from app.storage.base import ArtifactStore

logger = logging.getLogger("artifact_proxy.cli")

# Settings field -> its flag declarations (`mlflow server`'s where it has one).
SERVER_FLAGS: dict[str, tuple[str, ...]] = {
    "artifacts_destination": ("--artifacts-destination",),
    "host": ("-h", "--host"),
    "port": ("-p", "--port"),
    "workers": ("-w", "--workers"),
    "static_prefix": ("--static-prefix",),
    "allowed_hosts": ("--allowed-hosts",),
    "cors_allowed_origins": ("--cors-allowed-origins",),
    "x_frame_options": ("--x-frame-options",),
    "disable_security_middleware": ("--disable-security-middleware",),
    "metrics_dir": ("--expose-prometheus",),
    "artifacts_presigned_only": ("--artifacts-presigned-only",),
    "max_upload_size": ("--max-upload-size",),
    "log_level": ("--log-level",),
    "access_log": ("--access-log/--no-access-log",),
    "log_format": ("--log-format",),
    "shutdown_grace": ("--shutdown-grace",),
    "auth_config": ("--auth-config",),
    "audit_log": ("--audit-log",),
}
SECRET_NOTE = (
    "ARTIFACT_PROXY_SIGNING_SECRET is not set: multipart and presigned URLs are signed with a random key made for "
    "this launch, so they stop working when the server restarts; replicas need one configured secret, the same on each"
)


def _settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for name, decls in reversed(SERVER_FLAGS.items()):
        field = Settings.model_fields[name]
        names = env_names(Settings, name)
        help_text = f"{field.description} [env {', '.join(names)}]"
        kind: dict[str, Any] = {}
        values = typing.get_args(field.annotation)
        if field.annotation is bool and "/" not in decls[-1]:
            kind = {"is_flag": True}
        elif field.annotation in (int, int | None) and name != "max_upload_size":
            kind = {"type": int}
        elif values and all(isinstance(value, str) for value in values):
            kind = {"type": click.Choice(values)}
        command = click.option(*decls, name, default=None, help=help_text, **kind)(command)
    return command


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


@click.command(context_settings={"help_option_names": ["--help"]})
@_settings_options
@mlflow_flags.mlflow_only_options
def server(**flags: object) -> None:
    """Serve the mlflow-artifacts API. Every setting, flags or not: `artifact-proxy settings --markdown`."""
    refused = mlflow_flags.refusal(flags)
    if refused:
        raise click.UsageError(refused)
    notes = mlflow_flags.notes(flags)
    for name, value in flags.items():
        if value is not None:
            os.environ[env_names(Settings, name)[0]] = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        settings = Settings()
        if not settings.signing_secret:
            # Shared with the workers through the environment, as every setting is.
            os.environ["ARTIFACT_PROXY_SIGNING_SECRET"] = secrets.token_hex(32)
            settings = Settings()
            notes.append(SECRET_NOTE)
        store = open_store(settings.artifacts_destination, settings)
        if not store.capabilities.signs_own_urls and SECRET_NOTE in notes:
            notes.remove(SECRET_NOTE)  # storage presigns its own URLs: the key is never used
        asyncio.run(_preflight(settings, store))
    except (StoreConfigError, ValueError, ArtifactProxyError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        where = redacted(settings.artifacts_destination)
        raise click.ClickException(f"cannot prepare the artifacts destination {where}: {exc}") from exc
    run(settings, notes)


async def _preflight(settings: Settings, store: ArtifactStore) -> None:
    """Start the store once in this process, so a destination that cannot be served is one `Error:` line and exit
    status 1 before any worker starts (a worker failing in its lifespan would only be restarted, or exit 0)."""
    check_presigned_only(settings, store)
    await store.start()
    await store.close()


@click.command("settings")
@click.option("--markdown", is_flag=True, help="Print the reference of every setting (the README's table).")
def settings_command(markdown: bool) -> None:
    """Print every setting's value as this environment resolves it (secrets hidden)."""
    if markdown:
        click.echo(reference({name: decls[-1] for name, decls in SERVER_FLAGS.items()}), nl=False)
        return
    try:
        click.echo("\n".join(effective_settings(Settings())))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("hash-password")
@click.password_option()
def hash_password_command(password: str) -> None:
    """Print a salted PBKDF2 hash for the `password` field of an --auth-config user."""
    from app.passwords import hash_password

    click.echo(hash_password(password))


@click.command("hash-token")
@click.argument("token", required=False)
def hash_token_command(token: str | None) -> None:
    """Print the stored form of a bearer token (a new random token is made and shown when none is given)."""
    from app.auth import hash_token

    if token is None:
        token = secrets.token_urlsafe(32)
        click.echo(f"token:  {token}")
    click.echo(f"stored: {hash_token(token)}")


def run(settings: Settings, notes: list[str]) -> None:
    config = log_config(settings.log_level, settings.log_format, settings.audit_log)
    logging.config.dictConfig(config)
    for note in notes:
        logger.warning("%s", note)
    workers = settings.workers or default_workers()
    if settings.metrics and workers > 1:
        _prepare_multiprocess_metrics(settings.metrics_dir)
    uvicorn.run(
        "app.main:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        # httptools (much faster than h11) with limits on the request head; each worker reads them from its env.
        http=LimitedHttpToolsProtocol,
        log_config=config,
        log_level=settings.log_level,
        access_log=False,  # app.metrics writes the access log, with duration and byte counts
        timeout_graceful_shutdown=settings.shutdown_grace,
        timeout_keep_alive=settings.keepalive_timeout,
        proxy_headers=False,  # app.proxies believes forwarded headers, and only from ARTIFACT_PROXY_TRUSTED_PROXIES
    )


def _prepare_multiprocess_metrics(directory: str | None) -> None:
    # Every worker writes its samples here, so any worker's /metrics reports the whole server.
    directory = directory or tempfile.mkdtemp(prefix="artifact-proxy-metrics-")
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
