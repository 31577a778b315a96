"""`artifact-proxy server ...`: flags mirror `mlflow server`'s artifact flags, so a command line can be swapped."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import tempfile

import click
import uvicorn

from app import __version__
from app.errors import ArtifactProxyError
from app.http_limits import LimitedHttpToolsProtocol
from app.logs import log_config
from app.settings import Settings
from app.storage import StoreConfigError, open_store, redacted
from app.storage.base import ArtifactStore

logger = logging.getLogger("artifact_proxy.cli")

# Flags -> the environment variables Settings reads; uvicorn workers are fresh processes that only see the env.
FLAG_ENV = {
    "artifacts_destination": "ARTIFACT_PROXY_ARTIFACTS_DESTINATION",
    "host": "ARTIFACT_PROXY_HOST",
    "port": "ARTIFACT_PROXY_PORT",
    "workers": "ARTIFACT_PROXY_WORKERS",
    "static_prefix": "ARTIFACT_PROXY_STATIC_PREFIX",
    "log_level": "ARTIFACT_PROXY_LOG_LEVEL",
    "access_log": "ARTIFACT_PROXY_ACCESS_LOG",
    "max_upload_size": "ARTIFACT_PROXY_MAX_UPLOAD_SIZE",
    "log_format": "ARTIFACT_PROXY_LOG_FORMAT",
    "shutdown_grace": "ARTIFACT_PROXY_SHUTDOWN_GRACE",
    "auth_config": "ARTIFACT_PROXY_AUTH_CONFIG",
    "audit_log": "ARTIFACT_PROXY_AUDIT_LOG",
}


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


@click.group(context_settings={"help_option_names": ["--help"]})
@click.version_option(__version__, "--version", prog_name="artifact-proxy")
def main() -> None:
    """artifact-proxy: an async, streaming drop-in for `mlflow server --artifacts-only`."""


@main.command(context_settings={"help_option_names": ["--help"]})
@click.option(
    "--artifacts-destination",
    default=None,
    help="Local path, file://, s3://, gs:// or wasbs:// URI [env MLFLOW_ARTIFACTS_DESTINATION; default ./mlartifacts].",
)
@click.option("-h", "--host", default=None, help="Interface to bind [default 127.0.0.1].")
@click.option("-p", "--port", type=int, default=None, help="Port to listen on [default 5000].")
@click.option("-w", "--workers", type=int, default=None, help="Worker processes [default: CPU count, at most 4].")
@click.option("--static-prefix", default=None, help="Path prefix for every route, e.g. /mlflow.")
@click.option("--log-level", default=None, help="Log level (debug, info, warning, error).")
@click.option("--access-log/--no-access-log", default=None, help="Log every request.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None, help="Log line format.")
@click.option("--shutdown-grace", type=int, default=None, help="Seconds in-flight transfers get to finish on stop.")
@click.option("--max-upload-size", type=int, default=None, help="Refuse proxied uploads above this many bytes (413).")
@click.option("--auth-config", default=None, help="TOML file of users, tokens and path rules; turns auth on.")
@click.option("--audit-log", default=None, help="Write one JSON audit line per operation to this file ('-': stdout).")
@click.option("--artifacts-only", is_flag=True, help="Accepted for compatibility: artifacts are always served.")
@click.option("--serve-artifacts/--no-serve-artifacts", default=True, help="Accepted for compatibility.")
@click.option("--backend-store-uri", default=None, hidden=True, help="Ignored: this server keeps no tracking data.")
@click.option("--default-artifact-root", default=None, hidden=True, help="Ignored: use --artifacts-destination.")
def server(**flags: object) -> None:
    """Serve the mlflow-artifacts API."""
    for ignored in ("backend_store_uri", "default_artifact_root"):
        if flags.get(ignored):
            click.echo(f"note: --{ignored.replace('_', '-')} is ignored by artifact-proxy", err=True)
    if flags.get("serve_artifacts") is False:
        click.echo("note: --no-serve-artifacts is ignored: artifact-proxy always serves artifacts", err=True)
    for name, env in FLAG_ENV.items():
        value = flags.get(name)
        if value is not None:
            os.environ[env] = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        settings = Settings()
        asyncio.run(_preflight(open_store(settings.artifacts_destination, settings)))
    except (StoreConfigError, ValueError, ArtifactProxyError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        where = redacted(settings.artifacts_destination)
        raise click.ClickException(f"cannot prepare the artifacts destination {where}: {exc}") from exc
    run(settings)


async def _preflight(store: ArtifactStore) -> None:
    """Start the store once in this process, so a destination that cannot be served is one `Error:` line and exit
    status 1 before any worker starts (a worker failing in its lifespan would only be restarted, or exit 0)."""
    await store.start()
    await store.close()


@main.command("hash-password")
@click.password_option()
def hash_password_command(password: str) -> None:
    """Print a salted PBKDF2 hash for the `password` field of an --auth-config user."""
    from app.passwords import hash_password

    click.echo(hash_password(password))


@main.command("hash-token")
@click.argument("token", required=False)
def hash_token_command(token: str | None) -> None:
    """Print the stored form of a bearer token (a new random token is made and shown when none is given)."""
    import secrets

    from app.auth import hash_token

    if token is None:
        token = secrets.token_urlsafe(32)
        click.echo(f"token:  {token}")
    click.echo(f"stored: {hash_token(token)}")


def run(settings: Settings) -> None:
    config = log_config(settings.log_level, settings.log_format, settings.audit_log)
    logging.config.dictConfig(config)
    workers = settings.workers or default_workers()
    if settings.metrics and workers > 1:
        _prepare_multiprocess_metrics()
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


def _prepare_multiprocess_metrics() -> None:
    # Every worker writes its samples here, so any worker's /metrics reports the whole server.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="artifact-proxy-metrics-")
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
