"""Pure-ASGI middleware: a request-body cap (413) and one log line per request.

Both wrap `receive`/`send` rather than using BaseHTTPMiddleware, so streamed
responses pass straight through and a client's disconnect still reaches the app.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

log = logging.getLogger("minicpmv_edge.edge_runtime.server")


def error_bytes(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send)
        # read the whole body here (bounded), then replay it: FastAPI turns any error raised
        # while it reads the body into a 400, so the cap has to act before the app runs
        chunks, seen, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # client left before sending its body
                return
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await self._reject(send)
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send):
        body = error_bytes(f"request body is over the limit of {self.max_bytes} bytes (--max-body-mb)",
                           "invalid_request_error", "request_too_large")
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class RequestLog:
    """One line per request at info level, e.g.
    `id=3f2a... POST /v1/chat/completions 200 prompt=57 completion=16 slot=2 84 ms`; handlers put
    usage and the slot in scope state. The id is the response's X-Request-Id header (and the
    completion's id after `chatcmpl-`); `metrics` (ops.Metrics) counts the request."""

    def __init__(self, app, metrics=None):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [0]
        rid = uuid.uuid4().hex[:24]
        scope.setdefault("state", {})["request_id"] = rid

        async def tracking_send(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(msg)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            state = scope.get("state") or {}
            usage = state.get("usage") or {}
            ms = (time.perf_counter() - t0) * 1e3
            slot = f" slot={state['slot']}" if state.get("slot") is not None else ""
            extra = f" {state['note']}" if state.get("note") else ""
            log.info("id=%s %s %s %s prompt=%s completion=%s%s %.0f ms%s", rid, scope.get("method"), scope.get("path"),
                     status[0] or "-", usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), slot, ms,
                     extra)
            if self.metrics is not None:
                self.metrics.observe_http(scope.get("method", ""), scope.get("path", ""), status[0], ms / 1e3)


class ApiKey:
    """With --api-key, every /v1/ route needs `Authorization: Bearer KEY` (401 otherwise); /health stays open."""

    def __init__(self, app, key: str | None):
        self.app = app
        self.key = ("Bearer " + key).encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or not scope.get("path", "").startswith("/v1/"):
            return await self.app(scope, receive, send)
        import hmac

        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self.key):
            return await self.app(scope, receive, send)
        body = error_bytes("missing or wrong API key (send Authorization: Bearer <key>)",
                           "invalid_request_error", "invalid_api_key")
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
