"""A server installed without the video extra answers a video request with one JSON error naming the extra
(501, the same line the CLI and Python API print), not a 500, and keeps serving."""

from __future__ import annotations

import base64
import sys
import time

import pytest
from fastapi.testclient import TestClient

from minicpmv_edge.edge_runtime import LoadOptions, MiniCPMV
from minicpmv_edge.edge_runtime.server import ServerConfig, create_app
from tests.runtime_helpers import make_video


@pytest.fixture()
def client(store):
    res = store.converted("minicpmv-4.5")
    app = create_app(ServerConfig(model_id="v45", parallel=1, n_ctx=2048),
                     lambda: MiniCPMV(res.text_path, res.mmproj_path, LoadOptions(n_ctx=2048, n_threads=1)))
    with TestClient(app) as c:
        deadline = time.monotonic() + 120
        while c.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield c


def test_video_without_the_video_extra_is_a_501_naming_it(client, tmp_path, monkeypatch):
    clip = make_video(tmp_path / "clip.mp4", frames=4, fps=2, size=(64, 48))
    url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    monkeypatch.setitem(sys.modules, "av", None)  # what an install without [video] looks like to an import
    body = {"model": "v45", "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What happens?"}]}]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 501, r.text
    err = r.json()["error"]
    assert err["code"] == "missing_extra" and "pip install 'minicpmv-edge[video]'" in err["message"]
    assert "\n" not in err["message"]
    # the model is untouched: a plain request right after is answered
    r = client.post("/v1/chat/completions", json={"model": "v45", "max_tokens": 2, "temperature": 0,
                                                  "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, r.text
