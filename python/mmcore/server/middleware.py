"""ASGI middleware: request body limit (413), API key (401) and per-status request counts."""

from __future__ import annotations

import hmac
import json
import logging

from mmcore.server.errors import error_body
from mmcore.server.metrics import ServerMetrics

logger = logging.getLogger("mmcore.server")
_MAX_DRAIN_BYTES = 64 << 20
_KNOWN_ENDPOINTS = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/metrics",
    "/ping",
    "/version",
    "/tokenize",
    "/detokenize",
}


async def _send_error(send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class GuardMiddleware:
    """Counts every HTTP response by endpoint and status; refuses oversized bodies and bad keys.

    Args:
        app: the ASGI app to guard.
        metrics: where request counts go.
        max_request_bytes: largest request body (by Content-Length and as streamed).
        api_key: when set, ``/v1/*`` requests need ``Authorization: Bearer <api_key>`` (the
            scheme in any case, as RFC 7235 says).
        metrics_need_api_key: ``/metrics`` needs the key too.
        max_header_bytes: largest request path + headers (431 beyond).
    """

    def __init__(
        self,
        app,
        metrics: ServerMetrics,
        max_request_bytes: int,
        api_key: str | None,
        metrics_need_api_key: bool = False,
        max_header_bytes: int = 16 << 10,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.api_key = api_key
        self.metrics_need_api_key = metrics_need_api_key
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in _KNOWN_ENDPOINTS else "other"
        status_seen: list[int] = []

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
                self.metrics.http_requests.labels(
                    endpoint=endpoint, status=str(message["status"])
                ).inc()
            await send(message)

        head_bytes = len(scope.get("raw_path") or b"") + sum(
            len(name) + len(value) + 4 for name, value in scope.get("headers", [])
        )
        if head_bytes > self.max_header_bytes:
            await _send_error(
                counting_send,
                431,
                f"request headers exceed the limit of {self.max_header_bytes} bytes",
                "headers_too_large",
            )
            return
        if self.api_key is not None and self._needs_key(path) and not self._authorized(scope):
            logger.info("401 %s: invalid or missing API key", path)
            await _send_error(counting_send, 401, "invalid or missing API key", "invalid_api_key")
            return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            body = await self._read_body(scope, receive)
            if body is None:
                await _send_error(
                    counting_send,
                    413,
                    f"request body exceeds the limit of {self.max_request_bytes} bytes",
                    "request_too_large",
                )
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, counting_send)

    def _needs_key(self, path: str) -> bool:
        return path.startswith("/v1") or (self.metrics_need_api_key and path == "/metrics")

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                return hmac.compare_digest(token.strip(), self.api_key.encode())
        return False

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or None once it is known to exceed the limit."""
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        too_large = declared is not None and declared > self.max_request_bytes
        if too_large and declared > _MAX_DRAIN_BYTES:
            return None  # not worth reading: answer now and let the connection close
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            too_large = too_large or size > self.max_request_bytes
            # Keep reading (and dropping) a moderately large body so the client sees the 413
            # instead of a reset connection.
            if not too_large:
                chunks.append(chunk)
            if not message.get("more_body", False) or size > _MAX_DRAIN_BYTES:
                break
        return None if too_large else b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive() that yields the buffered body once, then the client's later messages."""
    sent = False

    async def replay_receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay_receive
