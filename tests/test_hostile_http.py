"""Hostile HTTP requests: each gets a 4xx OpenAI-shaped JSON error whose one-line message names
the field as the client wrote it, never a 500, a pydantic internal or a Python repr; the server
stays healthy afterwards (part of the hostile-input battery, with test_hostile_*.py)."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time

import pytest

from tests.test_hostile_runtime import png_bomb

MODEL = "v45"


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    import httpx
    import uvicorn

    from minicpmv_edge.edge_runtime import LoadOptions, MiniCPMV
    from minicpmv_edge.edge_runtime.server import MediaPolicy, ServerConfig, create_app

    res = store.converted("minicpmv-4.5")
    media = tmp_path_factory.mktemp("media")
    os.symlink(media / "loop-a", media / "loop-b")
    os.symlink(media / "loop-b", media / "loop-a")
    os.mkfifo(media / "fifo.png")
    os.symlink("/dev/zero", media / "zero.png")
    config = ServerConfig(model_id=MODEL, max_body_bytes=2_000_000, max_tokens_limit=64,
                          media=MediaPolicy(media_dir=media.resolve()))

    def load():
        return MiniCPMV(res.text_path, res.mmproj_path, LoadOptions(n_ctx=1024, n_threads=2))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(config, load), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    yield url
    srv.should_exit = True
    thread.join(timeout=15)


def _user(content):
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2}


def _image(url):
    return _user([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}])


def _b64(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


CASES = [
    # (id, raw body or JSON-able, status, words in the message, param)
    ("not-json", b"{model: v45", 400, ["not valid JSON"], None),
    ("array-body", [1, 2], 400, [], None),
    ("content-number", _user(123), 400, ["messages.0.content: has the wrong type"], "messages.0.content"),
    ("text-number", _user([{"type": "text", "text": 5}]), 400, ["messages.0.content.0.text: must be a valid string"],
     "messages.0.content.0.text"),
    ("role-robot", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, 400,
     ["messages.0: role 'robot' is not one of"], "messages.0"),
    ("no-role", {"model": MODEL, "messages": [{"content": "x"}]}, 400, ["messages.0: needs a role field"], "messages.0"),
    ("no-messages", {"model": MODEL, "messages": []}, 400, ["messages"], "messages"),
    ("no-model", {"messages": [{"role": "user", "content": "x"}]}, 400, ["model: is required"], "model"),
    ("url-number", _user([{"type": "image_url", "image_url": {"url": 7}}]), 400,
     ["messages.0.content.0.image_url.url: must be a valid string"], "messages.0.content.0.image_url.url"),
    ("temperature-words", {**_user("x"), "temperature": "hot"}, 400, ["temperature: must be a valid number"],
     "temperature"),
    ("max-tokens-over", {**_user("x"), "max_tokens": 10_000}, 400, ["max_tokens"], "max_tokens"),
    ("nul-path", _image("a\x00b.png"), 400, ["NUL character"], None),
    ("symlink-loop", _image("loop-a"), 400, ["cannot be resolved (a symlink loop?)"], None),
    ("bad-ipv6", _image("http://[::1/x.png"), 400, ["image_url is not a valid URL"], None),
    ("outside-media-dir", _image("../../../etc/passwd"), 400, ["outside the server's --media-dir"], None),
    ("file-url-outside", _image("file:///etc/passwd"), 400, ["outside the server's --media-dir"], None),
    ("dev-zero-link", _image("zero.png"), 400, ["outside the server's --media-dir"], None),
    ("fifo", _image("fifo.png"), 400, ["not a regular file"], None),
    ("unknown-scheme", _image("gopher://x/y.png"), 400, ["unsupported image URL scheme 'gopher'"], None),
    ("remote-disabled", _image("http://127.0.0.1:9/x.png"), 400, ["remote image URLs are disabled"], None),
    ("data-not-base64", _image("data:image/png;base64,@@@"), 400, ["base64"], None),
    ("data-garbage", _image(_b64(b"not an image" * 20)), 400, ["data URL: not a readable image"], None),
    ("data-bomb", _image(_b64(png_bomb(12000, 12000))), 400, ["144000000 pixels, over the limit"], None),
    ("marker-in-text", _user("look <__media__> here"), 400, ["media marker '<__media__>'"], None),
]


@pytest.mark.parametrize("case, body, status, needles, param", CASES, ids=[c[0] for c in CASES])
def test_hostile_requests(server, case, body, status, needles, param):
    import httpx

    data = body if isinstance(body, bytes) else json.dumps(body)
    t0 = time.monotonic()
    r = httpx.post(server + "/v1/chat/completions", content=data, headers={"Content-Type": "application/json"},
                   timeout=30)
    assert time.monotonic() - t0 < 20  # nothing blocks (FIFOs) or decodes a bomb
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    msg = err["message"]
    assert "\n" not in msg and "object at 0x" not in msg and "Input should be" not in msg, msg
    assert ".str" not in msg and "tagged-union" not in msg and "Traceback" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    if param is not None:
        assert err["param"] == param
    assert err["type"] and err["type"] != "server_error"


def test_hostile_body_too_large(server):
    import httpx

    r = httpx.post(server + "/v1/chat/completions", content=b"x" * 2_100_000,
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "over the limit" in r.json()["error"]["message"]


def test_server_healthy_after_the_battery_and_sse_has_no_empty_chunks(server):
    import httpx

    assert httpx.get(server + "/health", timeout=10).json() == {"status": "ok"}
    body = {**_user("Say something."), "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in events if c.get("choices")]
    assert deltas and deltas[0].get("role") == "assistant"
    assert all(d.get("content") != "" for d in deltas), deltas  # no empty content chunks
    assert "".join(d.get("content") or "" for d in deltas)
