"""Security headers on every response, and ``Cache-Control: no-store`` on the API's (pure ASGI).

API responses carry credentials (admin tokens, client API keys, join tokens) and private
data (adapters, metrics, the privacy ledger): none may be kept by a browser or proxy cache,
so everything under ``/api/`` and ``/metrics`` is ``no-store`` unless a route set its own
``Cache-Control``. Every response gets ``X-Content-Type-Options: nosniff``, a strict
``Referrer-Policy`` and is refused framing (``X-Frame-Options`` and CSP ``frame-ancestors``);
API responses other than the interactive docs page get a CSP that loads nothing
(``default-src 'none'``), since JSON is never meant to be rendered. The dashboard's own
files keep only the framing rule, so its scripts and styles still load.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fedlora_client.protocol import API_PREFIX

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ALWAYS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
FRAME_ONLY_CSP = b"frame-ancestors 'none'"
API_CSP = b"default-src 'none'; frame-ancestors 'none'"
NO_STORE = b"no-store"
DOCS_PATH = f"{API_PREFIX}/docs"


def _is_api(path: str) -> bool:
    return path.startswith(f"{API_PREFIX}/") or path in (API_PREFIX, "/metrics")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        api = _is_api(path)
        csp = API_CSP if api and not path.startswith(DOCS_PATH) else FRAME_ONLY_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [*ALWAYS, (b"content-security-policy", csp)]
                if api:
                    extra.append((b"cache-control", NO_STORE))
                headers.extend((n, v) for n, v in extra if n not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
