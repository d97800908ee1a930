"""The OpenAI-compatible app: /v1/chat/completions, /v1/models, /health (+ ops.py: the chat page
at /, /metrics, /props).

A request goes: ASGI middleware (CORS when enabled, log line, API key, body cap) -> pydantic
validation -> image sources resolved and decoded off the event loop (a thread) -> a `Job` for
the slot pool (a free slot, else the bounded queue; 429 when full) -> the slot's thread -> pieces
back to the event loop -> JSON or server-sent events. The model is loaded in a thread after the
socket opens, so /health (and every request) answers 503 until it is ready.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from minicpmv_edge.errors import ContextOverflowError, EdgeError, InputError, MediaError, MissingExtraError

from ..messages import normalize
from . import request as R
from . import schemas as S
from .middleware import ApiKey, BodyLimit, RequestLog
from .ops import install as install_ops
from .sources import MediaPolicy
from .validation import describe
from .worker import Job, QueueFull, Worker

log = logging.getLogger("minicpmv_edge.edge_runtime.server")


@dataclass(frozen=True)
class ServerConfig:
    model_id: str
    api_key: str | None = None
    max_queue: int = 16  # requests waiting behind the running one
    request_timeout_s: float = 300.0  # from arrival to the last token
    max_body_bytes: int = 20 << 20
    max_images: int = 8  # per request
    max_tokens_limit: int = 4096  # refuse larger max_tokens
    max_n: int = 8  # choices per request (generated one after another)
    default_max_tokens: int = 512
    media: MediaPolicy = field(default_factory=MediaPolicy)
    parallel: int | None = None  # slots decoding at once (None: pool.default_parallel)
    n_ctx: int | None = None  # positions per slot (None: the model's n_ctx)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API ("*": any); none: CORS off


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def error_for(exc: BaseException) -> ApiError:
    """Runtime exceptions -> OpenAI errors; messages of our own errors are safe to show, others are not."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, MediaError):
        return ApiError(400, str(exc), code="invalid_image", param="messages")
    if isinstance(exc, InputError):
        return ApiError(400, str(exc))
    if isinstance(exc, MissingExtraError):  # e.g. a video part on a server installed without [video]
        return ApiError(501, str(exc), "not_implemented", code="missing_extra", param="messages")
    if isinstance(exc, EdgeError):
        log.error("generation failed: %s", exc)
        return ApiError(500, str(exc), "server_error")
    log.error("unexpected error", exc_info=exc)
    return ApiError(500, "internal server error", "server_error")


class _State:
    def __init__(self):
        self.status = "loading"
        self.model = None
        self.worker: Worker | None = None


def create_app(config: ServerConfig, load: Callable[[], object],
               on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """`load()` returns a MiniCPMV; it runs on a thread once the server is up."""
    state = _State()

    def _load():
        try:
            model = load()
            state.worker = Worker(model, config.max_queue, config.parallel, config.n_ctx)
            state.model = model
            state.status = "ok"
            log.info("model %s ready: %d slots of %d tokens", config.model_id, state.worker.parallel,
                     state.worker.pool.n_ctx)
        except BaseException as exc:  # noqa: BLE001 - reported, then the server stops
            state.status = "error"
            log.error("cannot load the model: %s", exc)
            if on_load_error:
                on_load_error(exc)

    @asynccontextmanager
    async def lifespan(_app):
        threading.Thread(target=_load, name="model-load", daemon=True).start()
        yield
        if state.worker is not None:
            state.worker.close()

    app = FastAPI(title="minicpmv-edge", version="1", lifespan=lifespan,
                  description="OpenAI-compatible chat completions for MiniCPM-V GGUF pairs on llama.cpp")
    app.state.server = state
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(ApiKey, key=config.api_key)
    metrics = install_ops(app, config, state)
    app.add_middleware(RequestLog, metrics=metrics)
    if config.cors_origins:  # outermost: preflights are answered before the API key is asked for
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Request-Id"],
                           max_age=600)
    _install_error_handlers(app)
    _patch_openapi(app)

    errors = {c: {"model": S.ErrorResponse} for c in (400, 401, 404, 413, 429, 500, 501, 503, 504)}

    @app.get("/health", response_model=S.Health, responses={503: {"model": S.Health}})
    async def health():
        if state.status != "ok":
            return JSONResponse({"status": state.status}, status_code=503)
        # the truth, not a flag: llama.cpp's cache compared with each idle slot's record of it
        problem = await run_in_threadpool(state.worker.pool.health)
        if problem:
            return JSONResponse({"status": "error", "detail": problem}, status_code=503)
        return JSONResponse({"status": "ok"}, status_code=200)

    @app.get("/v1/models", response_model=S.ModelList, responses=errors)
    async def models():
        return S.ModelList(data=[S.ModelCard(id=config.model_id, created=int(time.time()))])

    @app.get("/v1/models/{model_id:path}", response_model=S.ModelCard, responses=errors)
    async def model_card(model_id: str):
        if model_id != config.model_id:
            raise _unknown_model(model_id, config.model_id)
        return S.ModelCard(id=config.model_id, created=int(time.time()))

    @app.post("/v1/chat/completions", response_model=S.ChatCompletion, responses={
        **errors, 200: {"description": "a chat.completion, or with stream=true server-sent events each carrying "
                                       "a chat.completion.chunk, ended by `data: [DONE]`",
                        "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}}}}})
    async def chat_completions(body: S.ChatCompletionRequest, request: Request):
        return await _chat(body, request, config, state)

    @app.post("/apply-template", response_model=S.AppliedTemplate, responses=errors)
    async def apply_template(body: S.ChatCompletionRequest):
        """As llama-server's /apply-template: the prompt a chat completion with this body would evaluate
        (the model's chat template; each image as mtmd's marker), without generating."""
        model = _ready(state, config, body)
        try:
            p = await run_in_threadpool(R.plan, body, model, config)
            turns = await run_in_threadpool(normalize, [_plain(m) for m in body.messages], model.limits,
                                            config.media.resolve)
            prompt = await run_in_threadpool(R.prompt_text, model, turns, p)
        except R.FieldError as exc:
            raise ApiError(400, str(exc), param=exc.param) from None
        except EdgeError as exc:
            raise error_for(exc) from None
        return {"prompt": prompt}

    return app


def _ready(state, config, body):
    if state.status != "ok":
        raise ApiError(503, "the model is still loading" if state.status == "loading" else "the model failed to load",
                       "server_error", code="model_loading", headers={"Retry-After": "2"})
    return state.model  # any `model` name: one model is served (as in /v1/chat/completions)


def _unknown_model(name: str, served: str) -> ApiError:
    return ApiError(404, f"the model {name!r} does not exist; this server serves {served!r}",
                    code="model_not_found", param="model")


async def _chat(body: S.ChatCompletionRequest, request: Request, config: ServerConfig, state: _State):
    t_arrival = time.monotonic()
    if state.status != "ok":
        raise ApiError(503, "the model is still loading" if state.status == "loading" else "the model failed to load",
                       "server_error", code="model_loading", headers={"Retry-After": "2"})
    # one model is served: any name reaches it (as with llama-server); /v1/models tells the real one
    model, worker = state.model, state.worker
    n_images = sum(1 for m in body.messages if isinstance(m.content, list)
                   for p in m.content if p.type == "image_url")
    if n_images > config.max_images:
        raise ApiError(400, f"{n_images} images in one request; this server accepts at most {config.max_images}",
                       code="too_many_images", param="messages")
    try:
        p = await run_in_threadpool(R.plan, body, model, config)  # may compile a grammar: off the event loop
    except R.FieldError as exc:
        raise ApiError(400, str(exc), param=exc.param) from None
    except EdgeError as exc:
        raise error_for(exc) from None
    messages = [_plain(m) for m in body.messages]
    try:
        worker.reserve()  # a queue slot first: a full server refuses before decoding any image
    except QueueFull as full:
        raise _busy(full.retry_after) from None
    try:
        turns = await run_in_threadpool(normalize, messages, model.limits, config.media.resolve)
    except BaseException as exc:  # bad image, or the client went away while we decoded
        worker.release()
        if isinstance(exc, EdgeError):
            raise error_for(exc) from None
        raise
    job = Job(turns, p.kwargs, asyncio.get_running_loop(), n=p.n)
    worker.submit(job)
    deadline = t_arrival + config.request_timeout_s
    waiter = _Waiter(request, job, worker, deadline, config.request_timeout_s)
    rid = getattr(request.state, "request_id", None) or uuid.uuid4().hex[:24]
    meta = dict(id=f"chatcmpl-{rid}", created=int(time.time()), model=config.model_id)
    try:
        first = await waiter.next()
        if first[0] == "error":
            raise error_for(first[1])
        if not body.stream:
            ev = first
            while ev[0] in ("piece", "choice"):
                ev = await waiter.next()
            if ev[0] == "error":
                raise error_for(ev[1])
            results = ev[1]
            request.state.usage = usage = _usage(results)
            request.state.slot = job.slot
            choices = []
            for i, r in enumerate(results):
                msg, lp = R.message(r, p.thinking, p.logprobs)
                choices.append({"index": i, "message": msg, "finish_reason": R.finish_reason(r.finish_reason),
                                "logprobs": lp})
            return {**meta, "object": "chat.completion", "choices": choices, "usage": usage}
    except _Gone:
        request.state.note = "client disconnected"
        return Response(status_code=499)
    finally:
        waiter.stop_watching()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(_sse(first, waiter, request, meta, include_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _busy(retry_after: int) -> ApiError:
    return ApiError(429, "the server is busy: the request queue is full; retry later", "rate_limit_exceeded",
                    code="queue_full", headers={"Retry-After": str(retry_after)})


def _usage(results) -> dict:
    """n choices share one prompt: it is counted once."""
    prompt = results[0].usage["prompt_tokens"] if results else 0
    completion = sum(r.usage["completion_tokens"] for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _plain(m) -> dict:
    role = "system" if m.role == "developer" else m.role
    content = m.content
    if isinstance(content, list):
        content = [p.model_dump(exclude_none=True) for p in content]
    out = {"role": role, "content": content}
    if getattr(m, "reasoning_content", None) is not None:
        out["reasoning_content"] = m.reasoning_content
    if getattr(m, "tool_calls", None):
        out["tool_calls"] = [c.model_dump() for c in m.tool_calls]
    if getattr(m, "tool_call_id", None) is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


class _Gone(Exception):
    """The client disconnected; the job was cancelled."""


class _Waiter:
    """Next event of a job, racing the client's disconnect and the request's deadline."""

    def __init__(self, request: Request, job: Job, worker: Worker, deadline: float, timeout_s: float):
        self.request, self.job, self.worker, self.deadline, self.timeout_s = request, job, worker, deadline, timeout_s
        self._disc: asyncio.Task | None = asyncio.ensure_future(self._watch())

    async def _watch(self):
        while (await self.request.receive())["type"] != "http.disconnect":
            pass

    def stop_watching(self):
        if self._disc is not None:
            self._disc.cancel()
            self._disc = None

    async def next(self):
        get = asyncio.ensure_future(self.job.events.get())
        waits = {get} | ({self._disc} if self._disc is not None else set())
        done, _ = await asyncio.wait(waits, timeout=max(0.0, self.deadline - time.monotonic()),
                                     return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        if self._disc is not None and self._disc in done:
            self.worker.cancel(self.job, "disconnect")
            raise _Gone
        self.worker.cancel(self.job, "timeout")
        raise ApiError(504, f"the request took longer than the server's limit of {self.timeout_s:g} s",
                       "timeout_error", code="timeout")


def _event(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _sse(first, waiter: _Waiter, request: Request, meta: dict, include_usage: bool):
    finished = False
    chunk = lambda i, delta, finish=None, lp=None: {**meta, "object": "chat.completion.chunk", "choices": [  # noqa: E731
        {"index": i, "delta": delta, "finish_reason": finish, "logprobs": lp}]}
    started: set[int] = set()
    n_calls: dict[int, int] = {}
    try:
        ev = first
        while True:
            kind, val = ev
            if kind == "piece":
                i, piece = val
                delta = {"reasoning_content": piece.text} if piece.reasoning else {"content": piece.text}
                if not piece.text:
                    delta = {}
                if piece.tool_call is not None:  # a whole call in one delta (clients join deltas by index)
                    k = n_calls.get(i, 0)
                    n_calls[i] = k + 1
                    delta = {"tool_calls": [{"index": k, **piece.tool_call.as_openai()}]}
                if i not in started:  # the first chunk of a choice names the role
                    started.add(i)
                    delta = {"role": "assistant", **delta}
                if delta or piece.logprobs:
                    yield _event(chunk(i, delta, lp=R.piece_logprobs(piece)))
            elif kind == "choice":
                i, r = val
                if i not in started:
                    started.add(i)
                    yield _event(chunk(i, {"role": "assistant", "content": ""}))
                yield _event(chunk(i, {}, R.finish_reason(r.finish_reason)))
            elif kind == "done":
                request.state.usage = usage = _usage(val or [])
                request.state.slot = waiter.job.slot
                if include_usage:
                    yield _event({**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage})
                break
            else:
                e = error_for(val)
                yield _event({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
                break
            try:
                ev = await waiter.next()
            except ApiError as e:  # timeout mid-stream: headers are sent, so the error is an event
                yield _event({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
                break
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        if not finished:  # Starlette cancelled us: the client disconnected
            waiter.worker.cancel(waiter.job, "disconnect")
            request.state.note = "client disconnected"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_req, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, exc: RequestValidationError):
        errs = exc.errors()
        # a field we do not implement is named as such, whatever else is wrong
        unknown = next((e for e in errs if e.get("type") == "extra_forbidden"), None)
        # else the most specific problem: a value inside a union (content: str | [parts]) fails every branch,
        # and the deepest location is the one the caller got wrong
        first = unknown or max(errs, key=lambda e: len(e.get("loc", ())), default={})
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return ApiError(400, f"request body is not valid JSON ({first.get('msg', '')})",
                            code="invalid_json").response()
        where = ".".join(loc)
        if unknown:
            return ApiError(400, f"{where}: this field is not supported by minicpmv-edge (see docs/api-fields.md)",
                            param=where, code="unsupported_field").response()
        # locations as the client wrote them (no pydantic union tags such as content.str)
        where, problem, n = describe(errs, getattr(exc, "body", None))
        more = f" (and {n - 1} more problems)" if n > 1 else ""
        msg = f"{where}: {problem}" if where else problem
        return ApiError(400, msg + more, param=where or None, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_req, exc: Exception):
        return error_for(exc).response()


def _patch_openapi(app: FastAPI) -> None:
    """Our validation errors are 400s in OpenAI's shape: drop FastAPI's 422 entries from the schema."""
    original = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        spec = original()
        for item in spec.get("paths", {}).values():
            for op in item.values():
                if isinstance(op, dict):
                    op.get("responses", {}).pop("422", None)
        comps = spec.setdefault("components", {}).setdefault("schemas", {})
        comps.pop("HTTPValidationError", None)
        comps.pop("ValidationError", None)
        for name, model in (("ChatCompletionChunk", S.ChatCompletionChunk),):
            if name not in comps:
                sch = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for k, v in sch.pop("$defs", {}).items():
                    comps.setdefault(k, v)
                comps[name] = sch
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
