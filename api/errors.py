"""One exception tree for the control plane, mapped to HTTP statuses in one place.

::

    ApiError (500)
    +-- BadRequestError (400)       the request cannot be processed as sent
    +-- AuthenticationError (401)   no or invalid credentials
    +-- PermissionDeniedError (403) authenticated, but not allowed
    +-- NotFoundError (404)         unknown object, or one that belongs to someone else
    +-- ConflictError (409)         the object's current state forbids the action
    +-- PayloadTooLargeError (413)
    +-- InvalidInputError (422)     a field's value is wrong; the message names it and the fix
    +-- TooManyRequestsError (429)  throttled (failed logins); ``Retry-After`` says when to retry
    +-- ServiceBusyError (503)      saturated (password hashing slots); ``Retry-After`` as well

The artifact store's and upload validator's errors carry their own ``status_code``
(``api.storage.ArtifactError`` and ``api.uploads``); :func:`install_error_handlers` maps them
here too, so every error reaches the client as ``{"detail": ..., "code": ...}``. A request that
fails schema validation gets 422 with ``detail`` a list of ``{loc, msg, type}``: where and what,
never the submitted value (FastAPI's default echoes it, and request bodies carry join tokens
and passwords).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ApiError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequestError(ApiError):
    status_code = 400
    code = "bad_request"


class AuthenticationError(ApiError):
    status_code = 401
    code = "not_authenticated"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class PermissionDeniedError(ApiError):
    status_code = 403
    code = "permission_denied"


class NotFoundError(ApiError):
    status_code = 404
    code = "not_found"

    @classmethod
    def of(cls, kind: str, object_id: object) -> NotFoundError:
        return cls(f"{kind} {object_id} not found (or not visible to you); check the id")


class ConflictError(ApiError):
    status_code = 409
    code = "conflict"


class PayloadTooLargeError(ApiError):
    status_code = 413
    code = "payload_too_large"


class InvalidInputError(ApiError):
    status_code = 422
    code = "invalid_input"


class TooManyRequestsError(ApiError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = max(1, retry_after)


class ServiceBusyError(ApiError):
    status_code = 503
    code = "service_busy"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


def _body(message: str, code: str) -> dict[str, Any]:
    return {"detail": message, "code": code}


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(_body(exc.message, exc.code), exc.status_code, headers=exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field and the problem, without echoing the submitted input."""
    assert isinstance(exc, RequestValidationError)
    problems = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": problems, "code": InvalidInputError.code}, 422)


async def _status_error(_request: Request, exc: Exception) -> JSONResponse:
    """Errors of api.storage / api.uploads: they carry ``status_code`` themselves."""
    status = int(getattr(exc, "status_code", 500))
    code = type(exc).__name__.removesuffix("Error").lower() or "error"
    return JSONResponse(_body(str(exc), code), status)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    import importlib

    for module_name, names in (
        ("api.storage", ("ArtifactError",)),
        ("api.uploads", ("UploadRejected", "UploadRejectedError")),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # pragma: no cover - written in parallel; mapped once present
            continue
        for name in names:
            base = getattr(module, name, None)
            if isinstance(base, type) and issubclass(base, Exception):
                app.add_exception_handler(base, _status_error)
