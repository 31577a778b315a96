"""`HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY`, as MLflow's own client (requests) honours them.

Not aiohttp's `trust_env=True`: that also looks up `~/.netrc` on every request (a thread hop each), and a netrc entry
for the server would collide with the `Authorization` header the MLflow credentials make (aiohttp refuses both).
The proxies are read once per command; whether a host bypasses them is asked per request, from the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.request import proxy_bypass

import aiohttp
from aiohttp.helpers import ProxyInfo, proxies_from_env
from yarl import URL


@dataclass(frozen=True)
class EnvProxies:
    by_scheme: dict[str, ProxyInfo]

    @classmethod
    def read(cls) -> EnvProxies:
        return cls(dict(proxies_from_env()))

    def for_url(self, url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """The proxy (and its credentials) a request to `url` goes through; (None, None) to go direct."""
        info = self.by_scheme.get(url.scheme)
        if info is None or (url.host is not None and proxy_bypass(url.host)):
            return None, None
        return info.proxy, info.proxy_auth
