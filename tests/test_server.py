"""The OpenAI-compatible server, end to end: a real `python -m minicpmv_edge serve` subprocess
driven by the official `openai` client and by raw httpx for the error paths.

Two servers on the tiny 4.5 fixture: A (roomy queue, --media-dir, small body cap) for the
happy paths, errors, concurrency, disconnects and memory; B (--max-queue 1, --api-key,
--allow-remote-media) for 429, 401 and remote fetches.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import httpx as httpx
import openai as openai

from tests.runtime_helpers import noise_image  # noqa: E402

MODEL = "v45"
KEY = "s3cret"


def _png(w=64, h=48, seed=0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(noise_image(w, h, seed)).save(buf, "PNG")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


# the vision tower is the slow part on 2 cores: tests reuse these pixels (the runtime caches embeddings)
PNG1 = data_uri(_png(seed=1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, folder: Path, log: Path, *flags: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "minicpmv_edge", "serve", str(folder), "--port", str(self.port),
             "--model-name", MODEL, "-t", "1", *flags], stdout=self._log, stderr=subprocess.STDOUT, env=env,
            cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError("server did not become healthy:\n" + log.read_text())

    def client(self, key: str = "none", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)

    def post(self, body, headers=None, **kw):
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(self.url + "/v1/chat/completions", content=data, timeout=60,
                          headers={"Content-Type": "application/json", **(headers or {})}, **kw)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def folder(store) -> Path:
    return Path(store.converted("minicpmv-4.5").text_path).parent


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    (d / "ok.png").write_bytes(_png(seed=1))  # same pixels as the other tests: one encode, cached
    (d.parent / "secret.png").write_bytes(_png(seed=4))
    return d


@pytest.fixture(scope="module")
def srv(folder, media_dir, tmp_path_factory):
    s = Server(folder, tmp_path_factory.mktemp("logA") / "server.log", "--max-queue", "32", "--media-dir",
               str(media_dir), "--max-body-mb", "2", "--max-tokens-limit", "3000")
    yield s
    s.stop()


def user(*parts):
    return {"role": "user", "content": [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]}


def image(url):
    return {"type": "image_url", "image_url": {"url": url}}


def err(r, status: int, code: str | None = None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    if code:
        assert e["code"] == code, e
    return e


# --- happy paths, through the official client ----------------------------------------
def test_models_and_openapi(srv):
    ids = [m.id for m in srv.client().models.list().data]
    assert ids == [MODEL]
    spec = httpx.get(srv.url + "/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"] and "ChatCompletionChunk" in spec["components"]["schemas"]
    try:
        from openapi_spec_validator import validate
    except ImportError:
        json.dumps(spec)  # at least serialisable, with paths and components
    else:
        validate(spec)


def test_non_streaming_and_streaming_agree(srv):
    c = srv.client()
    msgs = [user("Say something.")]
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0, seed=1)
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    assert isinstance(r.choices[0].message.content, str)
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0, seed=1,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and not chunks[-1].choices
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason


def test_images_as_data_uris_and_multi_turn(srv):
    c = srv.client()
    one = c.chat.completions.create(model=MODEL, max_tokens=4, temperature=0,
                                    messages=[user(image(PNG1), "What is it?")])
    two = c.chat.completions.create(model=MODEL, max_tokens=4, temperature=0,
                                    messages=[user(image(PNG1), image(data_uri(_png(seed=2))), "Compare.")])
    text = c.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, messages=[user("What is it?")])
    assert two.usage.prompt_tokens > one.usage.prompt_tokens > text.usage.prompt_tokens
    history = [{"role": "system", "content": "You are terse."}, user(image(PNG1), "What is it?"),
               {"role": "assistant", "content": one.choices[0].message.content}, user("And the colour?")]
    r = c.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, messages=history)
    assert r.usage.prompt_tokens > one.usage.prompt_tokens


def test_thinking_returns_reasoning_content(srv):
    c = srv.client()
    kw = dict(model=MODEL, messages=[user("Think first.")], max_tokens=24, temperature=0,
              extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    msg = c.chat.completions.create(**kw).choices[0].message
    assert isinstance(getattr(msg, "reasoning_content", None), str) and msg.reasoning_content
    deltas = [ch.choices[0].delta for ch in c.chat.completions.create(stream=True, **kw) if ch.choices]
    streamed = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert streamed.strip() == msg.reasoning_content
    off = c.chat.completions.create(model=MODEL, messages=[user("Hi")], max_tokens=4).choices[0].message
    assert getattr(off, "reasoning_content", None) is None


def test_local_media_only_inside_media_dir(srv, media_dir):
    ok = srv.post({"model": MODEL, "max_tokens": 2, "messages": [user(image(str(media_dir / "ok.png")), "x")]})
    assert ok.status_code == 200, ok.text
    ok2 = srv.post({"model": MODEL, "max_tokens": 2, "messages": [user(image((media_dir / "ok.png").as_uri()), "x")]})
    assert ok2.status_code == 200, ok2.text
    for url in (str(media_dir.parent / "secret.png"), str(media_dir / ".." / "secret.png"), "file:///etc/passwd",
                "../secret.png"):
        err(srv.post({"model": MODEL, "messages": [user(image(url), "x")]}), 400)


# --- bad requests ------------------------------------------------------------------------
def test_bad_requests_get_openai_errors(srv):
    err(srv.post(b'{"model": "v45", "messages": ['), 400, "invalid_json")
    err(srv.post({"model": MODEL, "messages": "hello"}), 400)
    err(srv.post({"model": MODEL, "messages": [user("x")], "max_tokens": "many"}), 400)
    err(srv.post({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}), 400)
    err(srv.post({"model": MODEL, "messages": [user("x")], "max_tokens": 100000}), 400)
    err(srv.post({"model": MODEL, "messages": [user("x")], "temperature": -1}), 400)
    err(srv.post({"model": MODEL, "messages": [{"role": "assistant", "content": "x"}]}), 400)
    # one model is served: any `model` name reaches it (test_server_parallel.py); an unknown id is 404 only
    # where a model is looked up by id
    e = err(httpx.get(srv.url + "/v1/models/gpt-4o"), 404, "model_not_found")
    assert e["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        srv.client().models.retrieve("nope")
    err(srv.post({"model": MODEL, "messages": [user(image("data:image/png;base64," + base64.b64encode(
        b"\x89PNG\r\n\x1a\n" + os.urandom(300)).decode()), "x")]}), 400, "invalid_image")
    err(srv.post({"model": MODEL, "messages": [user(image("data:image/png;base64,@@@"), "x")]}), 400)
    e = err(srv.post({"model": MODEL, "messages": [user(image("http://127.0.0.1:9/a.png"), "x")]}), 400)
    assert "--allow-remote-media" in e["message"]
    err(srv.post({"model": MODEL, "messages": [user(*[image(PNG1)] * 9, "x")]}), 400, "too_many_images")
    big = {"model": MODEL, "messages": [user(image(data_uri(b"x" * (3 << 20))), "x")]}
    err(srv.post(big), 413, "request_too_large")
    err(httpx.get(srv.url + "/v1/nothing-here"), 404)
    assert httpx.get(srv.url + "/health").json() == {"status": "ok"}


# --- concurrency, disconnects, memory ------------------------------------------------
def test_eight_concurrent_clients(srv):
    def one(i):
        c = srv.client()
        r = c.chat.completions.create(model=MODEL, max_tokens=8, seed=i,
                                      messages=[user(image(PNG1), f"Client {i}?")])
        return r.usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        assert all(n > 0 for n in pool.map(one, range(8)))


def test_disconnect_mid_stream_cancels(srv):
    body = {"model": MODEL, "stream": True, "max_tokens": 3000, "temperature": 1.0,
            "messages": [user("Write a very long story.")]}
    with httpx.Client(timeout=30) as hc:
        with hc.stream("POST", srv.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            first = next(resp.iter_lines())
            assert first.startswith("data: ")
    t0 = time.perf_counter()
    r = srv.client().chat.completions.create(model=MODEL, messages=[user("Quick?")], max_tokens=2)
    assert r.choices and time.perf_counter() - t0 < 3.0
    deadline = time.monotonic() + 5
    while "client disconnected" not in srv.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "client disconnected" in srv.log_path.read_text()
    assert httpx.get(srv.url + "/health").status_code == 200


def test_memory_stays_bounded(srv):
    c = srv.client()
    png = PNG1
    for i in range(5):
        c.chat.completions.create(model=MODEL, max_tokens=8, messages=[user(image(png), f"warm {i}")])
    warm = srv.rss_kb()
    for i in range(30):
        c.chat.completions.create(model=MODEL, max_tokens=8, stream=i % 2 == 1,
                                  messages=[user(image(png), f"request {i}")])
    assert httpx.get(srv.url + "/health").status_code == 200
    assert srv.rss_kb() < 1.5 * warm, (warm, srv.rss_kb())
    lines = [ln for ln in srv.log_path.read_text().splitlines() if "POST /v1/chat/completions 200" in ln]
    assert lines and "prompt=" in lines[-1] and " ms" in lines[-1]


# --- server B: tiny queue, API key, remote media ----------------------------------------
@pytest.fixture(scope="module")
def srv_b(folder, tmp_path_factory):
    s = Server(folder, tmp_path_factory.mktemp("logB") / "server.log", "--max-queue", "1", "--api-key", KEY,
               "--allow-remote-media", "--remote-max-mb", "0.5", "--max-tokens-limit", "3000")
    yield s
    s.stop()


def test_api_key(srv_b):
    e = err(httpx.get(srv_b.url + "/v1/models"), 401, "invalid_api_key")
    assert e["type"] == "invalid_request_error"
    err(srv_b.post({"model": MODEL, "messages": [user("x")]}, headers={"Authorization": "Bearer wrong"}), 401)
    with pytest.raises(openai.AuthenticationError):
        srv_b.client("wrong").models.list()
    assert srv_b.client(KEY).models.list().data[0].id == MODEL
    assert httpx.get(srv_b.url + "/health").status_code == 200  # health stays open


def test_full_queue_gives_429_with_retry_after(srv_b):
    # long enough to hold the one queue slot while the other five arrive; with the real 151k vocabulary a
    # random model almost never samples <|im_end|>, so every request runs to max_tokens
    body = {"model": MODEL, "max_tokens": 300, "temperature": 1.0, "messages": [user("Long answer please.")]}
    auth = {"Authorization": f"Bearer {KEY}"}
    with ThreadPoolExecutor(6) as pool:
        rs = list(pool.map(lambda _: srv_b.post(body, headers=auth), range(6)))
    codes = sorted(r.status_code for r in rs)
    assert 200 in codes and 429 in codes, codes
    for r in rs:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            err(r, 429, "queue_full")
    assert srv_b.post({**body, "max_tokens": 2}, headers=auth).status_code == 200


def test_remote_media_with_flag(srv_b, tmp_path):
    (tmp_path / "a.png").write_bytes(_png(seed=1))
    (tmp_path / "big.bin").write_bytes(b"\0" * (600 << 10))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        ok = srv_b.post({"model": MODEL, "max_tokens": 2, "messages": [user(image(base + "/a.png"), "x")]},
                        headers=auth)
        assert ok.status_code == 200, ok.text
        err(srv_b.post({"model": MODEL, "messages": [user(image(base + "/big.bin"), "x")]}, headers=auth), 400)
        err(srv_b.post({"model": MODEL, "messages": [user(image(base + "/missing.png"), "x")]}, headers=auth), 400)
    finally:
        httpd.shutdown()
