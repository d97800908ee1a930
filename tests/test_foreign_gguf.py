"""A GGUF pair written by another tool runs like ours: llama.cpp's own convert_hf_to_gguf.py on the
4.6 fixture (no minicpmv_edge.* keys) is recognised from standard keys by the one detection that
`inspect` and the runtimes share, and gives the same prompt and the same greedy answer as our
conversion through the CLI, the OpenAI server and the C bridge."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime.messages import normalize
from minicpmv_edge.gguf_info import facts_of, read_info
from tests.runtime_helpers import noise_image

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is in the image?"


@pytest.fixture(scope="module")
def pairs(store, tmp_path_factory):
    ours = store.converted("minicpmv-4.6")
    text, mmproj = store.llama_pair("minicpmv-4.6")  # llama.cpp's own converter, made once per session
    return {"ours": (str(ours.text_path), str(ours.mmproj_path)), "llama.cpp": (str(text), str(mmproj))}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(noise_image(600, 400, seed=31)).save(p)  # sliced: overview + slices
    return p


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minicpmv_edge", *args], capture_output=True, text=True, cwd=ROOT)


def test_recognised_from_standard_keys(pairs):
    text, mmproj = pairs["llama.cpp"]
    t, m = read_info(text), read_info(mmproj)
    assert not [k for k in t.kv if k.startswith("minicpmv_edge.")] and not [k for k in m.kv if k.startswith("minicpmv_edge.")]
    facts, own = facts_of(t, m)
    ours, own_ours = facts_of(read_info(pairs["ours"][0]), read_info(pairs["ours"][1]))
    assert (facts.family, own, own_ours) == ("minicpmv-4.6", False, True)
    # every fact the runtime and bridge use agrees with what our converter wrote for the same checkpoint
    assert facts == ours
    r = _cli("inspect", text, mmproj, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pair"] == {"ok": True, "problems": []}
    assert out["files"][0]["detected_family"] == "minicpmv-4.6 (detected from standard keys)"


def test_same_prompt_and_answer_through_the_cli(pairs, image):
    prompts, answers = {}, {}
    for name, (text, mmproj) in pairs.items():
        m = MiniCPMV(text, mmproj, n_ctx=2048, n_threads=2)
        try:
            msgs = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [Image.open(image), QUESTION]}]
            prompts[name] = m.build_prompt(normalize(msgs, m.limits), True)[0]
        finally:
            m.close()
        r = _cli("chat", "-m", text, "--mmproj", mmproj, "--image", str(image), "-p", QUESTION, "--temp", "0",
                 "-n", "16", "--json", "-t", "2")
        assert r.returncode == 0, r.stderr
        answers[name] = json.loads(r.stdout)["text"]
    assert prompts["ours"] == prompts["llama.cpp"]
    assert answers["ours"] == answers["llama.cpp"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_ask(text: str, mmproj: str, image: Path, log: Path) -> str:
    port = _free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "minicpmv_edge", "serve", "-m", text, "--mmproj", mmproj,
                                 "--port", str(port), "--model-name", "m", "-t", "2"], stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
            import base64

            uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
            r = client.chat.completions.create(model="m", temperature=0, max_tokens=16, seed=1, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                             {"type": "text", "text": QUESTION}]}])
            return r.choices[0].message.content
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_same_answer_through_the_server(pairs, image, tmp_path):
    answers = {name: _serve_and_ask(t, m, image, tmp_path / f"{name}.log") for name, (t, m) in pairs.items()}
    assert answers["ours"] == answers["llama.cpp"]


def test_same_prompt_and_answer_through_the_bridge(pairs, image):
    sys.path.insert(0, str(ROOT / "mobile_bridge" / "python"))
    import mcv_bridge

    build = mcv_bridge.build("plain", jni=True, napi=True)
    lib = mcv_bridge.load_library(build / "libminicpmv_edge_bridge.so")
    lib.mcv_set_log_callback(None, None)
    bridge = mcv_bridge.Bridge(lib)
    got = {}
    for name, (text, mmproj) in pairs.items():
        model = bridge.load(text, mmproj, n_ctx=2048, n_threads=2)
        s = bridge.session(model)
        try:
            bridge.check(lib.mcv_session_add_image_file(s, str(image).encode()), s)
            bridge.check(lib.mcv_session_add_text(s, 1, QUESTION.encode()), s)
            prompt = bridge.prompt_text(s)
            rc, reply = bridge.generate(s, max_tokens=16)
            assert rc == 0
            got[name] = (prompt, reply)
        finally:
            lib.mcv_session_free(s)
            lib.mcv_model_free(model)
    assert got["ours"] == got["llama.cpp"]
