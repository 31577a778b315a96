"""uvicorn's httptools protocol with limits on the request head: its size, its number of fields, and its arrival time.

uvicorn's `HttpToolsProtocol` (0.54) has none of the three (issue 13, case 6). httptools hands a header over only once
its line is complete and keeps the unfinished name and value itself, and uvicorn keeps every finished header: a client
that never ends its head makes the worker hold all it sends (40 such connections took the server from 53 to 723 MiB).
And nothing times a connection before its head is complete: uvicorn's keep-alive timer starts only after a response,
and any byte received cancels it, so connecting and sending nothing, or trickling a head, holds a connection forever.

`LimitedHttpToolsProtocol` keeps uvicorn's parsing and only adds, per request head:

- `max_header_bytes`: past it the answer is 431 and the connection is closed, the worker having buffered at most a
  read or two (256 KiB each) beyond the limit;
- `max_header_fields`: the field after the last allowed one is a 431 too;
- `header_timeout`: the head must be complete this many seconds after the connection opened, or after the first byte
  of a later request on a kept-alive connection. A partial head is answered 408 (the MLflow client retries 408); a
  connection that has sent nothing is just closed, as uvicorn closes an idle keep-alive connection.

Bodies and responses are not touched (`upload_idle_timeout` bounds stalled bodies; the transport it writes to holds
small writes until the end of the loop's step, `app/coalescing.py`), nor are idle kept-alive
connections (uvicorn's `timeout_keep_alive`). The cost: one event-loop timer per connection (and one per later head
that does not arrive in one read), a few attribute updates per request and per header, and per read, body chunks
included, a counter read before and after parsing.

The subclass relies on these uvicorn internals (0.54): `parser`, `headers`, `url`, `cycle`, `transport`, `loop`,
`logger`, `server_state.default_headers`, `_unset_keepalive_if_required`, `send_400_response`, `_should_upgrade`,
`handle_websocket_upgrade` and `_unsupported_upgrade_warning`; `data_received` is uvicorn's, with the checks added.
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from typing import Any, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.coalescing import CoalescingTransport
from app.settings import Settings


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int
    max_fields: int
    timeout: float  # seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> HeadLimits:
        return cls(settings.max_header_bytes, settings.max_header_fields, settings.header_timeout)


@functools.cache
def limits_from_env() -> HeadLimits:
    """Read once per worker. uvicorn starts workers as fresh processes and builds the protocol itself, from a config
    that has no place for these limits; the workers' environment is the one the CLI prepared, as for the app."""
    return HeadLimits.from_settings(Settings())


class _HeadRefused(Exception):
    """Raised from a parser callback to stop httptools mid-feed; `_refusal` says why."""


# Where the parser is in the stream of requests. Each parser callback that moves it on adds 1 to `_step`, so
# `_step % 3` is the phase, and the change across one `feed_data` tells how many boundaries that read crossed.
_IDLE, _HEAD, _BODY = 0, 1, 2


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = limits_from_env()
        self.max_head_bytes = limits.max_bytes
        self.max_head_fields = limits.max_fields
        self.head_timeout = limits.timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._step = _IDLE
        self._head_bytes = 0  # bytes received in reads that held only this head (the raw count)
        self._head_size = 0  # header lines httptools has handed over (the parsed count)
        self._refusal = ""

    # Connection ---------------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # A response's head and small body leave in one send (app/coalescing.py).
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
        self._start_head_timer()  # counts from the connection's start: sending nothing at all is also stalling

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        before = self._step
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal:
                self._refuse(431, "BAD_REQUEST", self._refusal)
            else:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        phase = self._step % 3
        if phase == _HEAD:
            self._head_continues(len(data), self._step - before)
        elif phase == _IDLE and self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            # Bytes between requests that begin none (httptools skips blank lines): they cancelled uvicorn's
            # keep-alive timer, which is only armed again by a response, so without this one a "\r\n" now and then
            # would hold an idle connection forever.
            self._start_head_timer()

    def _head_continues(self, size: int, crossed: int) -> None:
        """The read just parsed (`size` bytes, `crossed` phase changes) ended inside a request head."""
        # The whole read is head if it continued this head (crossed 0) or began between requests and began this one
        # (crossed 1: idle -> head). Otherwise it started inside the previous request (pipelining): this head's share
        # of it is left to the parsed count, and the raw count takes this head's later reads.
        if crossed <= 1:
            self._head_bytes += size
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, "BAD_REQUEST", self._too_large())
                return
        if self._head_timer is None:
            self._start_head_timer()

    # Parser callbacks ---------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._step += 1
        self._head_bytes = 0
        self._head_size = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.max_head_fields:
            self._refusal = f"More than {self.max_head_fields} request header fields"
            raise _HeadRefused
        # Counted as sent in canonical form, "name: value\r\n": a lower bound of what the client sent for it.
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.max_head_bytes:
            self._refusal = self._too_large()
            raise _HeadRefused
        # uvicorn's on_header, inlined: this runs for every header of every request.
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._step += 1
        self._stop_head_timer()
        # The URL too: a long one arriving in a single read is in neither count yet.
        if self._head_size + len(self.url) > self.max_head_bytes:
            self._refusal = self._too_large()
            raise _HeadRefused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._step += 1
        super().on_message_complete()

    # Head timer and refusals --------------------------------------------------------------------------------------

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._step % 3 == _HEAD:
            self._refuse(408, "DEADLINE_EXCEEDED", f"Request head not received within {self.head_timeout:g} s")
        else:
            self.transport.close()  # nothing to answer: no request has begun

    def _too_large(self) -> str:
        return f"Request head (URL and header fields) larger than {self.max_head_bytes} bytes"

    def _refuse(self, status: int, error_code: str, message: str) -> None:
        """Answer with MLflow's error JSON and close, reading nothing more. While an earlier (pipelined) request's
        response is still being sent, an answer would corrupt it: then the connection is only closed."""
        self._stop_head_timer()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        self.logger.warning("%s: %d %s", client, status, message)
        if self.cycle is None or self.cycle.response_complete:
            body = json.dumps({"error_code": error_code, "message": message}).encode()
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n",
                    b"\r\n",
                    body,
                ]
            )
            self.transport.write(b"".join(content))
        self.transport.close()
