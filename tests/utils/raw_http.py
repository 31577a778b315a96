"""Read HTTP responses from raw sockets completely.

Tests that speak HTTP over a bare socket (to stall a body, hang up mid-request, or hold a connection open across a
signal) must never take one `recv` for the whole reply: a reply arrives in as many pieces as the network likes, and
a single read may end after the headers. `read_response` parses the status line and headers, then reads the body to
its end (Content-Length bytes, the last chunk of a chunked body, or EOF), with http.client's parser.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


def read_head(sock: socket.socket, method: str = "GET", timeout: float = 60) -> http.client.HTTPResponse:
    """Read the status line and headers (interim 1xx replies skipped); the body is left to read from the result."""
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock, method=method)
    try:
        response.begin()
    except BaseException:
        response.close()
        raise
    return response


def read_response(sock: socket.socket, method: str = "GET", timeout: float = 60) -> RawResponse:
    """The whole response to the request just sent on `sock`; `timeout` bounds each wait for more bytes."""
    response = read_head(sock, method, timeout)
    try:
        body = response.read()  # raises IncompleteRead if the connection ends before the body does
    finally:
        response.close()
    return RawResponse(response.status, {name.lower(): value for name, value in response.getheaders()}, body)
