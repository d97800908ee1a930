"""`serve --parallel N` end to end: concurrent clients each get the answer they get alone, a client
that leaves stops only its own slot, the queue in front of the slots is bounded, and the operator's
side: /metrics (Prometheus text), /props, a request log line per request, --cors-origin, and a
`model` field that takes any name while /v1/models reports the real one."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.pool_helpers import compare_steps
from tests.test_server import KEY, MODEL, Server, _png, data_uri, err, image, user

GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "logprobs": True, "top_logprobs": 5}


@pytest.fixture(scope="module")
def folder(store) -> Path:
    return Path(store.converted("minicpmv-4.5").text_path).parent


@pytest.fixture(scope="module")
def par(folder, tmp_path_factory):
    s = Server(folder, tmp_path_factory.mktemp("par") / "server.log", "--parallel", "4", "--max-queue", "16")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def edge(folder, tmp_path_factory):
    """Two slots, one queue place, an API key, CORS for one origin."""
    s = Server(folder, tmp_path_factory.mktemp("edge") / "server.log", "--parallel", "2", "--max-queue", "1",
               "--api-key", KEY, "--cors-origin", "http://ui.example", "--max-tokens-limit", "3000")
    yield s
    s.stop()


def _bodies() -> list[dict]:
    prompts = ["What is in this picture?", "Describe the colours.", "Name one thing you see.", "Is it a photo?",
               "Tell me a story about it.", "Count the objects.", "Which part is brightest?", "One word?"]
    out = []
    for i, q in enumerate(prompts):
        parts = [image(data_uri(_png(48 + 8 * i, 40, seed=30 + i))), q] if i != 5 else ["No image. " + q]
        out.append({"model": MODEL, "messages": [user(*parts)], "max_tokens": 12 + 2 * i, **GREEDY})
    return out


def _steps(choice: dict) -> list:
    return [(tuple(e["bytes"]), e["logprob"], {tuple(t["bytes"]): t["logprob"] for t in e["top_logprobs"]})
            for e in choice["logprobs"]["content"]]


def _stream(s: Server, body: dict) -> dict:
    """A streamed request, put back together as a non-streamed answer."""
    text, lps, usage, finish = [], [], None, None
    with httpx.stream("POST", s.url + "/v1/chat/completions", json={**body, "stream": True,
                      "stream_options": {"include_usage": True}}, timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            for c in ev["choices"]:
                text.append(c["delta"].get("content") or "")
                lps += (c.get("logprobs") or {}).get("content") or []
                finish = c["finish_reason"] or finish
    return {"message": {"content": "".join(text)}, "logprobs": {"content": lps}, "finish_reason": finish,
            "usage": usage}


def _metrics(s: Server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(s.url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for sample in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            key = sample.name + (f"{{{labels}}}" if labels else "")
            out[key] = sample.value
    return out


def test_concurrent_clients_get_their_own_answers(par):
    bodies = _bodies()
    alone = []
    for b in bodies:  # one at a time: each request alone in the server
        r = par.post(b)
        assert r.status_code == 200, r.text
        alone.append(r.json())
    before = _metrics(par)

    def one(i):
        if i % 2:  # half of them streamed
            return _stream(par, bodies[i])
        r = par.post(bodies[i])
        assert r.status_code == 200, r.text
        c = r.json()["choices"][0]
        return {**c, "usage": r.json()["usage"]}

    with ThreadPoolExecutor(8) as ex:
        together = list(ex.map(one, range(8)))
    identical = 0
    for a, t in zip(alone, together):
        ca = a["choices"][0]
        k = compare_steps(_steps(ca), _steps(t))
        if k is None:
            identical += 1
            assert t["message"]["content"] == ca["message"]["content"] and t["finish_reason"] == ca["finish_reason"]
            assert t["usage"] == a["usage"]
    assert identical >= 6
    after = _metrics(par)
    assert after["minicpmv_edge_generations_total{outcome=ok}"] - before["minicpmv_edge_generations_total{outcome=ok}"] == 8
    assert after["minicpmv_edge_completion_tokens_total"] - before["minicpmv_edge_completion_tokens_total"] == \
        sum(t["usage"]["completion_tokens"] for t in together)
    assert after["minicpmv_edge_decode_batch_max"] >= 2  # the clients were decoded together
    steps = after["minicpmv_edge_decode_steps_total"] - before["minicpmv_edge_decode_steps_total"]
    tokens = after["minicpmv_edge_decode_step_tokens_total"] - before["minicpmv_edge_decode_step_tokens_total"]
    assert tokens > steps > 0
    assert after["minicpmv_edge_slots"] == 4 and after["minicpmv_edge_slots_busy"] == 0
    assert after["minicpmv_edge_queue_depth"] == 0
    assert after["minicpmv_edge_http_requests_total{path=/v1/chat/completions,status=200}"] >= 16


def test_any_model_name_reaches_the_one_model(par):
    r = par.post({"model": "gpt-4o", "messages": [user("Hello")], "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == MODEL
    via_sdk = par.client().chat.completions.create(model="anything", messages=[user("Hello")], max_tokens=3,
                                                   temperature=0)
    assert via_sdk.choices[0].message.content == r.json()["choices"][0]["message"]["content"]
    assert [m.id for m in par.client().models.list().data] == [MODEL]
    err(httpx.get(par.url + "/v1/models/gpt-4o"), 404, "model_not_found")
    applied = [httpx.post(par.url + "/apply-template", json={"model": name, "messages": [user("Hello")]}, timeout=60)
               for name in ("gpt-4o", MODEL)]
    assert [a.status_code for a in applied] == [200, 200] and applied[0].json() == applied[1].json()


def test_props_describe_the_served_model(par, folder):
    p = httpx.get(par.url + "/props", timeout=10).json()
    assert p["model"] == MODEL and p["family"] == "minicpmv-4.5" and p["total_slots"] == 4
    assert Path(p["model_path"]).parent == folder and Path(p["mmproj_path"]).parent == folder
    assert p["n_ctx"] == 4096 and p["modalities"]["vision"] is True and p["thinking"] is True
    assert "<|im_start|>" in p["chat_template"]
    assert p["default_generation_settings"]["max_tokens"] == 512 and p["build_info"]["llama_cpp_python"]


def test_one_log_line_per_request(par):
    r = par.post({"model": MODEL, "messages": [user("Log me.")], "max_tokens": 4, "temperature": 0})
    rid = r.headers["x-request-id"]
    assert r.json()["id"] == "chatcmpl-" + rid
    deadline = time.monotonic() + 5
    line = None
    while line is None and time.monotonic() < deadline:
        line = next((ln for ln in par.log_path.read_text().splitlines() if f"id={rid} " in ln), None)
        time.sleep(0.05)
    assert line is not None and line.startswith("INFO ")
    usage = r.json()["usage"]
    assert f"POST /v1/chat/completions 200 prompt={usage['prompt_tokens']} " \
           f"completion={usage['completion_tokens']} slot=" in line and line.endswith(" ms")


def test_a_client_that_leaves_stops_only_its_slot(par):
    bodies = _bodies()[:2]
    alone = [par.post(b).json()["choices"][0] for b in bodies]
    before = _metrics(par)
    long = {"model": MODEL, "stream": True, "max_tokens": 3000, "temperature": 0, "ignore_eos": True,
            "messages": [user("Write a very long story.")]}
    with ThreadPoolExecutor(2) as ex:
        with httpx.Client(timeout=60) as hc, hc.stream("POST", par.url + "/v1/chat/completions", json=long) as resp:
            assert resp.status_code == 200
            next(resp.iter_lines())  # it is generating
            others = [ex.submit(par.post, b) for b in bodies]
            time.sleep(0.2)
        # the stream is closed: its slot stops while the others go on
        served = [f.result().json()["choices"][0] for f in others]
    for a, s in zip(alone, served):
        compare_steps(_steps(a), _steps(s))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = _metrics(par)
        if after["minicpmv_edge_generations_total{outcome=cancelled}"] > \
                before["minicpmv_edge_generations_total{outcome=cancelled}"]:
            break
        time.sleep(0.1)
    assert after["minicpmv_edge_generations_total{outcome=cancelled}"] == \
        before["minicpmv_edge_generations_total{outcome=cancelled}"] + 1
    assert after["minicpmv_edge_completion_tokens_total"] - before["minicpmv_edge_completion_tokens_total"] < 3000
    assert httpx.get(par.url + "/health").json() == {"status": "ok"}


def test_cors_only_for_the_allowed_origin(par, edge):
    auth = {"Authorization": f"Bearer {KEY}"}
    # off by default: no CORS headers, a preflight is not answered as one
    r = httpx.get(par.url + "/v1/models", headers={"Origin": "http://ui.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    assert "access-control-allow-origin" not in httpx.options(par.url + "/v1/chat/completions", headers=pre).headers
    # --cors-origin: the preflight passes without the API key, the answer carries the header
    ok = httpx.options(edge.url + "/v1/chat/completions", headers=pre)
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://ui.example"
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    bad = httpx.options(edge.url + "/v1/chat/completions", headers={**pre, "Origin": "http://evil.example"})
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    r = httpx.get(edge.url + "/v1/models", headers={"Origin": "http://ui.example", **auth})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ui.example"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    r = httpx.get(edge.url + "/v1/models", headers={"Origin": "http://evil.example", **auth})
    assert "access-control-allow-origin" not in r.headers


def test_queue_in_front_of_the_slots_is_bounded(edge):
    """Two slots and one queue place: of six long requests at once three are admitted, three get 429."""
    body = {"model": MODEL, "max_tokens": 400, "temperature": 0, "ignore_eos": True, "messages": [user("Long.")]}
    auth = {"Authorization": f"Bearer {KEY}"}
    with ThreadPoolExecutor(6) as ex:
        rs = list(ex.map(lambda _: edge.post(body, headers=auth), range(6)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [200, 200, 200, 429, 429, 429], codes
    for r in rs:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            err(r, 429, "queue_full")
    assert edge.post({**body, "max_tokens": 2}, headers=auth).status_code == 200
