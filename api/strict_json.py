"""Every JSON request body is checked once, before any route sees it (pure ASGI middleware).

Python's JSON parser accepts what no field of this API can store or use: ``NaN`` and
``Infinity`` (as numbers), NUL characters (PostgreSQL text cannot hold them) and lone UTF-16
surrogates (not encodable as UTF-8). Left to the routes, each of them surfaced as a 500 from
the database or a later computation. Here a body that holds one is refused with a 422 that
names where it is, and a body over ``max_json_body_bytes`` with a 413 before it is parsed
(an anonymous caller could otherwise make the API parse megabytes). Update files are
``application/octet-stream`` and never pass through here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyRejectedError(ValueError):
    """Why a JSON body is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _constant(name: str) -> Any:
    raise BodyRejectedError(f"{name} is not a number this API accepts: send a finite number")


def _where(path: list[str | int]) -> str:
    return "body" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in path)


def _check_text(text: str, path: list[str | int], what: str) -> None:
    if "\x00" in text:
        raise BodyRejectedError(
            f"{what} at {_where(path)} contains a NUL character (\\u0000); remove it"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyRejectedError(
            f"{what} at {_where(path)} contains a lone UTF-16 surrogate; send valid Unicode"
        ) from None


def check_value(value: Any, path: list[str | int] | None = None) -> None:
    """Raise :class:`BodyRejectedError` if a parsed JSON value holds a NUL or a lone surrogate."""
    path = path or []
    stack: list[tuple[Any, list[str | int]]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where, "a string")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, [*where, key], "a key")
                stack.append((child, [*where, key]))
        elif isinstance(item, list):
            stack.extend((child, [*where, i]) for i, child in enumerate(item))


def check_body(body: bytes, limit: int) -> None:
    """Raise :class:`BodyRejectedError` unless ``body`` is JSON this API can store."""
    if len(body) > limit:
        raise BodyRejectedError(
            f"the JSON body is {len(body)} bytes; at most {limit} are accepted", 413
        )
    if not body.strip():
        return  # the route's own validation says what is missing
    try:
        value = json.loads(body, parse_constant=_constant)
    except BodyRejectedError:
        raise
    except ValueError:
        return  # malformed JSON: FastAPI answers 422 with where it broke
    check_value(value)


def _is_json(scope: Scope) -> bool:
    """A JSON body, or one FastAPI would parse as JSON (no content type), except the update
    bytes of an upload session's PATCH."""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            kind = bytes(value).split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or kind.endswith(b"+json")
    method, path = scope.get("method", ""), str(scope.get("path", ""))
    return method in ("POST", "PUT", "PATCH") and "/client/uploads/" not in path


class StrictJSONMiddleware:
    """Reads a JSON request body (up to ``limit`` bytes), checks it, then replays it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        try:
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    raise BodyRejectedError(
                        f"the JSON body is over {self.limit} bytes; at most {self.limit} are "
                        "accepted",
                        413,
                    )
                chunks.append(chunk)
                more = bool(message.get("more_body", False))
            body = b"".join(chunks)
            check_body(body, self.limit)
        except BodyRejectedError as problem:
            await _answer(send, problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _answer(send: Send, problem: BodyRejectedError) -> None:
    code = "payload_too_large" if problem.status == 413 else "invalid_input"
    payload = json.dumps({"detail": str(problem), "code": code}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": problem.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
