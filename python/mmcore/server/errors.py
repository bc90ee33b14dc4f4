"""OpenAI-style error bodies and the exception handlers that produce them."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("mmcore.server")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error the client caused (4xx) or that the server reports (5xx).

    Args:
        status: the HTTP status code.
        message: what went wrong, for the client.
        code: a short machine-readable code (e.g. ``"invalid_image"``).
        headers: extra response headers (e.g. ``Retry-After``).
        param: the request field at fault, when one is.
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers
        self.param = param


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict:
    """The ``{"error": {"message", "type", "param", "code"}}`` body OpenAI clients parse
    (``param``: the request field at fault, when one is)."""
    err_type = _TYPE_BY_STATUS.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response with the OpenAI error body."""
    return JSONResponse(
        error_body(status, message, code, param), status_code=status, headers=headers
    )


def _format_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "invalid request: " + "; ".join(parts)


def _validation_param(exc: RequestValidationError) -> str | None:
    """The field the first error is about: an unknown or unsupported field's name, else the
    location of the invalid value (``messages.0.role``)."""
    for err in exc.errors():
        field = (err.get("ctx") or {}).get("field")
        if field is not None:
            return str(field)
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if loc:
            return loc
    return None


def _log_refusal(request: Request, status: int, message: str) -> None:
    """Log why a request was refused (4xx), with the client and route, for operators."""
    if 400 <= status < 500:
        client = request.client.host if request.client else "-"
        logger.info(
            "%s %s from %s -> %d: %s", request.method, request.url.path, client, status, message
        )


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to an OpenAI error body; validation errors are 400, never 422."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        _log_refusal(request, exc.status, exc.message)
        return error_response(exc.status, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = _format_validation_error(exc)
        _log_refusal(request, 400, message)
        return error_response(400, message, "invalid_value", _validation_param(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        _log_refusal(request, exc.status_code, message)
        return error_response(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error while serving a request")
        return error_response(500, f"internal server error: {type(exc).__name__}", "internal_error")
