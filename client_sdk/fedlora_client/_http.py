"""HTTP plumbing: explicit timeouts, retries with backoff and jitter, server errors -> exceptions.

Retried (tenacity, exponential backoff with full jitter, ``RetryPolicy``): transport errors
(connection refused or dropped, timeouts) and responses 429 and 5xx, honouring ``Retry-After``
when the server sends one. Never retried: every other 4xx, which means the request itself must
change. After the last attempt the error surfaces as the named exception of ``_errors``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from fedlora_client._errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    ServerUnavailableError,
    TransportError,
    UnprocessableError,
)

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)

_ADVICE: dict[int, tuple[type[ServerError], str]] = {
    401: (AuthenticationError, "the server did not accept this client's API key: run "
          "`fedlora-client enroll` again with a fresh join token"),
    403: (PermissionDeniedError, "this client is not allowed to do that: check that it is an "
          "active member of the federation (ask the federation admin)"),
    404: (NotFoundError, "not found: the task may have expired or been reassigned; the client "
          "will ask for a new task"),
    409: (ConflictError, "conflict with the server's state (the task was already submitted, the "
          "round closed, or an upload offset moved); fetch the current state and retry"),
    413: (PayloadTooLargeError, "the upload is larger than the server accepts: ask the admin to "
          "raise the limit, or use a smaller rank"),
    422: (UnprocessableError, "the server rejected the request as invalid; the detail names the "
          "field. Check that the SDK and server versions match"),
    429: (RateLimitedError, "the server is rate limiting this client; retried with backoff, "
          "still refused: wait a minute and run again"),
}  # fmt: skip


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else str(detail)[:300]


def raise_for_status(response: httpx.Response) -> None:
    """Raise the named :class:`ServerError` subclass for an error response."""
    status = response.status_code
    if status < 400:
        return
    if not response.is_closed:
        response.read()
    if status in _ADVICE:
        cls, advice = _ADVICE[status]
    elif status >= 500:
        cls, advice = ServerUnavailableError, "the server failed; retried, still failing: try later"
    else:
        cls, advice = ServerError, "the server refused the request"
    raise cls(advice, status_code=status, detail=_detail(response))


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, RateLimitedError | ServerUnavailableError):
        return True
    return isinstance(exc, httpx.TransportError)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts in total and the exponential backoff range (seconds)."""

    attempts: int = 6
    backoff_min: float = 0.5
    backoff_max: float = 30.0

    def retrying(self) -> Retrying:
        jitter = wait_random_exponential(multiplier=self.backoff_min, max=self.backoff_max)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
                return min(exc.retry_after, self.backoff_max)
            return float(jitter(state))

        return Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait,
            retry=retry_if_exception(_retryable),
            reraise=True,
        )


class Http:
    """An ``httpx.Client`` for one server with the retry policy and error mapping applied."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, transport=transport, timeout=timeout
        )
        self.retry = retry or RetryPolicy()

    def close(self) -> None:
        self.client.close()

    def request(
        self, method: str, url: str, *, retry: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """Send (with retries unless ``retry=False``); return a success or raise a named error."""
        policy = self.retry if retry else RetryPolicy(attempts=1)
        try:
            for attempt in policy.retrying():
                with attempt:
                    response = self.client.request(method, url, **kwargs)
                    _attach_retry_after(response)
        except httpx.TransportError as exc:
            raise transport_error(exc, str(self.client.base_url)) from exc
        return response

    @contextlib.contextmanager
    def stream(self, method: str, url: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response (errors raised before the body is read; not retried here)."""
        with self.client.stream(method, url, **kwargs) as response:
            _attach_retry_after(response)
            yield response


def _attach_retry_after(response: httpx.Response) -> None:
    try:
        raise_for_status(response)
    except RateLimitedError as exc:
        value = response.headers.get("Retry-After", "")
        exc.retry_after = float(value) if value.replace(".", "", 1).isdigit() else None
        raise


def transport_error(exc: httpx.TransportError, url: str) -> TransportError:
    """The named error for a network failure that outlived the retries."""
    return TransportError(
        f"cannot reach the server at {url} ({type(exc).__name__}: {exc}); check the URL, the "
        "network and any proxy, then run again (uploads resume where they stopped)"
    )
