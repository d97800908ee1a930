"""4.7 / OCR through the runtime surfaces: usage counts tokens under canvas M-RoPE, a follow-up turn
reuses the KV state (recurrent snapshot) and answers as a fresh evaluation would, and the OpenAI
server serves image requests for both families with the official client."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minicpmv_edge.edge_runtime.api import MiniCPMV
from tests.runtime_helpers import noise_image

GREEDY = dict(temperature=0, repeat_penalty=1.0, max_tokens=6)


def test_usage_counts_tokens_not_positions(store):
    res = store.converted("minicpmv-4.7")
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2)
    try:
        r = m.chat([{"role": "user", "content": [Image.fromarray(noise_image(900, 500, 1)), "Describe."]}], **GREEDY)
        planner = m.session.planner
        n_tokens, n_positions = len(planner.last_ids), int(planner.last_positions.max()) + 1
        assert n_positions < n_tokens  # a canvas frame spans fewer positions than tokens
        assert r.usage["prompt_tokens"] == n_tokens
    finally:
        m.close()


@pytest.mark.parametrize("family", ["minicpmv-4.7", "minicpm-ocr-1.0"])
def test_follow_up_reuses_state_and_equals_fresh(store, family):
    res = store.converted(family)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2)
    fresh = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2)
    try:
        img = Image.fromarray(noise_image(700, 500, 2))
        msgs = [{"role": "user", "content": [img, "What is in the picture?"]}]
        r1 = m.chat(msgs, **GREEDY)
        assert r1.usage["completion_tokens"] >= 1
        before = m.counters.snapshot()
        # a fixed earlier answer: the random model's own may start with newlines that merge with the
        # turn prefix into other tokens, which no cache could reuse
        msgs += [{"role": "assistant", "content": "A picture."}, {"role": "user", "content": "And the colours?"}]
        r2 = m.chat(msgs, **GREEDY)
        assert m.counters.images_encoded == before.images_encoded  # nothing re-encoded
        assert m.counters.prompt_tokens_reused - before.prompt_tokens_reused >= r1.usage["prompt_tokens"] - 8
        assert r2.timings.prompt_tokens_evaluated < r2.usage["prompt_tokens"] // 2
        want = fresh.chat(msgs, **GREEDY)
        assert r2.raw == want.raw and r2.usage["prompt_tokens"] == want.usage["prompt_tokens"]
    finally:
        m.close()
        fresh.close()


@pytest.mark.parametrize("family", ["minicpmv-4.7", "minicpm-ocr-1.0"])
def test_server_serves_images(store, tmp_path, family):
    from tests.test_server import MODEL, Server

    folder = Path(store.converted(family).text_path).parent
    srv = Server(folder, tmp_path / "server.log")
    try:
        buf = io.BytesIO()
        Image.fromarray(noise_image(640, 400, 3)).save(buf, format="PNG")
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        c = srv.client()
        r = c.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": "What is it?"}]}])
        t = c.chat.completions.create(model=MODEL, max_tokens=4, temperature=0,
                                      messages=[{"role": "user", "content": "What is it?"}])
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
        assert r.usage.prompt_tokens > t.usage.prompt_tokens + 100  # overview + slices
    finally:
        srv.stop()


def _with_kv(src: Path, dst: Path, key: str, value: str) -> Path:
    """A copy of a GGUF with one string key set (what an edited file or another tool might carry)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(str(src))
    w = GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", key):
            continue
        vtype = f.types[0]
        w.add_key_value(f.name, f.contents(), vtype, sub_type=f.types[-1] if vtype == GGUFValueType.ARRAY else None)
    w.add_string(key, value)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed(t.shape.tolist())), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_ocr_adaptive_upsize_in_a_gguf_is_refused(store, tmp_path):
    """The converter refuses `adaptive`; a GGUF that carries it anyway is refused at load, not run with
    the 'never' sizes."""
    from minicpmv_edge import schema
    from minicpmv_edge.errors import UnsupportedModelError

    res = store.converted("minicpm-ocr-1.0")
    text = _with_kv(Path(res.text_path), tmp_path / "ocr-adaptive.gguf", schema.EDGE_SMALL_IMAGE_UPSIZE, "adaptive")
    with pytest.raises(UnsupportedModelError, match=r"small_image_upsize = 'adaptive': .*'always' and 'never' only"):
        MiniCPMV(text, res.mmproj_path, n_ctx=1024, n_threads=1)
    never = _with_kv(Path(res.text_path), tmp_path / "ocr-never.gguf", schema.EDGE_SMALL_IMAGE_UPSIZE, "never")
    m = MiniCPMV(never, res.mmproj_path, n_ctx=1024, n_threads=1)
    try:
        spec = m.session.planner.image_spec
        assert (spec.small_image_upsize, spec.resample) == ("never", "torch")  # OCR's torchvision processor
    finally:
        m.close()
