"""What runs beside the API: the chat page (GET /), Prometheus metrics (GET /metrics) and model
information (GET /props, shaped after llama-server's).

Metrics come from prometheus_client (the text exposition format, one registry per app): HTTP
requests by path and status with their durations, counted by the request-log middleware, and the
slot pool's own counts read at scrape time (pool.PoolStats): generations by outcome, prompt tokens
(and how many were evaluated rather than reused from a slot's KV cache), completion tokens, images
encoded, seconds spent encoding / prefilling / decoding, queue depth, slots busy, decode steps and
the tokens they batched.
"""

from __future__ import annotations

import logging
import time
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

log = logging.getLogger("minicpmv_edge.edge_runtime.server")

PREFIX = "minicpmv_edge_"


class Metrics:
    """The app's registry: HTTP counters fed by middleware.RequestLog, and the pool read on scrape."""

    def __init__(self, state):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.http = Counter(PREFIX + "http_requests", "HTTP requests answered, by path and status",
                            ["path", "status"], registry=self.registry)
        self.latency = Histogram(PREFIX + "http_request_duration_seconds",
                                 "Time from request to the last byte of the answer, chat completions",
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
                                 registry=self.registry)
        self.registry.register(_PoolCollector(state))

    def observe_http(self, method: str, path: str, status: int, seconds: float) -> None:
        # known routes only as label values: a scan of random URLs must not grow the label set
        known = path if path in ("/", "/health", "/metrics", "/props", "/v1/models", "/v1/chat/completions") \
            else "/v1/models/{id}" if path.startswith("/v1/models/") else "other"
        self.http.labels(known, str(status or 0)).inc()
        if known == "/v1/chat/completions" and method == "POST":
            self.latency.observe(seconds)

    def render(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class _PoolCollector:
    def __init__(self, state):
        self.state = state

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        worker = self.state.worker
        if worker is None:  # still loading
            return
        s = worker.pool.stats()
        gen = CounterMetricFamily(PREFIX + "generations", "Requests the slots finished, by outcome",
                                  labels=["outcome"])
        for outcome in ("ok", "cancelled", "error"):
            gen.add_metric([outcome], s.requests.get(outcome, 0))
        yield gen
        counters = (
            ("prompt_tokens", "Prompt tokens of finished requests", s.prompt_tokens),
            ("prompt_tokens_evaluated", "Prompt tokens evaluated (the rest were reused from a slot's KV cache)",
             s.prompt_tokens_evaluated),
            ("completion_tokens", "Tokens generated", s.completion_tokens),
            ("images_encoded", "Image slices run through the vision encoder", s.images_encoded),
            ("encode_seconds", "Seconds spent encoding images", s.encode_seconds),
            ("prefill_seconds", "Seconds spent evaluating prompts, image encodes excluded", s.prefill_seconds),
            ("decode_seconds", "Seconds from each answer's first token to its last", s.decode_seconds),
            ("decode_steps", "Batched llama_decode calls of generated tokens", s.steps),
            ("decode_step_tokens", "Tokens decoded in those steps (over decode_steps: the mean batch)",
             s.step_tokens),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(PREFIX + name, doc, value=value)
        yield GaugeMetricFamily(PREFIX + "queue_depth", "Requests admitted that wait for a slot",
                                value=worker.queue_depth())
        yield GaugeMetricFamily(PREFIX + "slots", "Slots (sequences decoded together)", value=s.slots)
        yield GaugeMetricFamily(PREFIX + "slots_busy", "Slots serving a request now", value=s.slots_busy)
        yield GaugeMetricFamily(PREFIX + "decode_batch_max", "Largest step so far (tokens)", value=s.max_batch)


def _props(config, state) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from minicpmv_edge import __version__

    model = state.model
    try:
        llama_version = version("llama-cpp-python")
    except PackageNotFoundError:
        llama_version = None
    defaults = model.sampling_defaults
    return {
        "model": config.model_id,
        "model_path": model.model.path,
        "mmproj_path": getattr(model.vision, "path", None) if model.vision is not None else None,
        "family": model.format.family,
        "total_slots": state.worker.parallel,
        "n_ctx": state.worker.pool.n_ctx,  # per slot
        "modalities": {"vision": model.vision is not None, "video": model.vision is not None},
        "thinking": bool(model.format.thinking_supported),
        "chat_template": getattr(model.format.template, "source", None),
        "default_generation_settings": {
            "temperature": defaults.temperature, "top_k": defaults.top_k, "top_p": defaults.top_p,
            "min_p": defaults.min_p, "repeat_penalty": defaults.repeat_penalty,
            "repeat_last_n": defaults.repeat_last_n, "max_tokens": config.default_max_tokens},
        "limits": {"max_tokens": config.max_tokens_limit, "max_images": config.max_images,
                   "max_queue": config.max_queue, "max_n": config.max_n},
        "build_info": {"minicpmv_edge": __version__, "llama_cpp_python": llama_version},
    }


def chat_page() -> str:
    return resources.files("minicpmv_edge.edge_runtime.server").joinpath("static", "chat.html").read_text("utf-8")


def install(app: FastAPI, config, state) -> Metrics:
    """Add GET /, /metrics and /props to `app`; returns the Metrics the request log feeds."""
    metrics = Metrics(state)
    page = chat_page()  # read once: a missing file fails at start, not on the first visit

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        return metrics.render()

    @app.get("/props")
    async def props():
        """The served model: paths, family, slots, context per slot, template, default sampling."""
        if state.status != "ok":
            return JSONResponse({"status": state.status}, status_code=503, headers={"Retry-After": "2"})
        return JSONResponse({**_props(config, state), "created": int(time.time())})

    return metrics
