"""create_app(settings): the lifespan opens and closes the store; routers are mounted under every prefix."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import Route

from app import openapi
from app.auth import Authenticator
from app.edge import Edge
from app.errors import EXCEPTION_HANDLERS
from app.metrics import Observer, metrics_endpoint
from app.middleware import SecurityPolicy, is_loopback
from app.passwords import PasswordChecker
from app.policy import check_presigned_only
from app.proxies import TrustedProxies
from app.routes import artifacts, meta, multipart, signed
from app.routes.direct import DirectRoutes
from app.settings import Settings
from app.storage import StoreConfigError, open_store, redacted

logger = logging.getLogger("artifact_proxy")


class AnyPathConvertor(Convertor[str]):
    """Like Starlette's `path`, but also matches newlines, so `%0a` paths reach validation and get a 400."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", AnyPathConvertor())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Work anyio sends to threads (a local store's steps have their own pool of this size, app/threads.py) runs
        # in this many per worker. Each holds the GIL between syscalls, so more threads than the disk can use only
        # make the event loop wait for the GIL.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.io_threads
        store = open_store(settings.artifacts_destination, settings)
        try:
            check_presigned_only(settings, store)
        except StoreConfigError as exc:
            logger.error("cannot serve: %s", exc)  # the line an operator looks for above the startup traceback
            raise
        await store.start()
        app.state.store = store
        logger.info("serving artifacts from %s", redacted(settings.artifacts_destination))
        authenticator = app.state.authenticator
        if authenticator is not None and authenticator.config().user_header and not proxies:
            logger.warning(
                "the auth config names trusted identity headers, but ARTIFACT_PROXY_TRUSTED_PROXIES is empty: "
                "requests carrying them are refused until it lists the ingress's addresses"
            )
        try:
            yield
        finally:
            await store.close()

    app = openapi.DescribedApp(
        title="artifact-proxy",
        lifespan=lifespan,
        openapi_url=f"{settings.static_prefix}/openapi.json",
        docs_url=None,  # app/openapi.py serves Swagger UI itself, with no Referer for the CDN
        redoc_url=None,
        redirect_slashes=False,
        # Our own metrics count every request (app.metrics); FastAPI's OpenTelemetry hooks would ask the global
        # providers on every request whether anybody listens: 10 us of a 16 KiB GET's 100.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        exception_handlers={**EXCEPTION_HANDLERS},
    )
    app.state.settings = settings
    proxies = TrustedProxies(Settings.split_list(settings.trusted_proxies))
    app.state.authenticator = (
        Authenticator(settings.auth_config, proxies, PasswordChecker(settings.login_failures))
        if settings.auth_config
        else None
    )
    app.router.redirect_slashes = False
    for prefix in settings.api_prefixes:
        app.router.routes.extend(artifacts.routes(prefix))
        app.router.routes.extend(multipart.routes(prefix))
        app.router.routes.extend(signed.routes(prefix))
    app.router.routes.extend(meta.routes(settings))
    app.router.routes.extend(openapi.routes(settings.static_prefix))
    security = None
    if settings.disable_security_middleware:
        logger.warning("security middleware disabled: no Host or origin checks, no security headers")
    else:
        security = SecurityPolicy(
            allowed_hosts=Settings.split_list(settings.allowed_hosts),
            allowed_origins=Settings.split_list(settings.cors_allowed_origins),
            loopback_only=is_loopback(settings.host),
            probe_paths=frozenset(
                {"/health", "/ready", f"{settings.static_prefix}/health", f"{settings.static_prefix}/ready"}
            ),
            frame_options=settings.x_frame_options,
        )
    if settings.metrics:
        app.router.routes.append(Route(f"{settings.static_prefix}/metrics", metrics_endpoint, methods=["GET"]))
    app.add_middleware(
        Edge,
        proxies=proxies,
        security=security,
        observer=Observer(access_log=settings.access_log),
        direct=DirectRoutes(settings.api_prefixes),
    )
    app.openapi()  # now, so a route with no description stops the app instead of failing its first /openapi.json
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings come from the environment the CLI prepared."""
    return create_app(Settings())
