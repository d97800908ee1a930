"""MiniCPM-V 4.7 and MiniCPM-OCR 1.0 through quantize, quality and export-vision.

- text Q4_K_M (llama.cpp's quantizer) and mmproj Q8_0 (ours): quality reports KL / top-1 for the
  text and per-token cosine for the projector; the quantized pair answers an image prompt through
  the processor-exact path, whose marker rows come from the quantized token_embd: a token fed as
  its dequantized row gives llama.cpp's own logits for that token;
- export-vision (ONNX) of each checkpoint: the runtime with the ONNX encoder gives the same greedy
  answer as with llama.cpp's encoder, crop for crop cosine >= 0.999.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from minicpmv_edge.edge_runtime.api import MiniCPMV
from minicpmv_edge.edge_runtime.engine import Context, Model
from minicpmv_edge.edge_runtime.processor_images import ImageSpec, layout, plan_sizes
from minicpmv_edge.edge_runtime.visual_plan import TokenRows
from minicpmv_edge.quantize.llama import quantize_text
from minicpmv_edge.quantize.mmproj import quantize_mmproj
from minicpmv_edge.quantize.quality import text_quality, vision_quality
from tests.runtime_helpers import noise_image

FAMILIES = ["minicpmv-4.7", "minicpm-ocr-1.0"]
GREEDY = dict(temperature=0, repeat_penalty=1.0, max_tokens=8)
PHOTO = (700, 500)
KL_Q4_K_M = {"minicpmv-4.7": 0.5, "minicpm-ocr-1.0": 2.0}  # upper bounds, see test_quality_reports


@pytest.fixture(scope="module", params=FAMILIES)
def quantized(request, store, tmp_path_factory):
    res = store.converted(request.param)
    d = tmp_path_factory.mktemp("q-" + request.param)
    text = quantize_text(res.text_path, d / "text-q4km.gguf", "Q4_K_M", nthread=2).path
    mm = quantize_mmproj(res.mmproj_path, d / "mmproj-q8.gguf", "Q8_0").path
    return request.param, res, text, mm


def test_quality_reports(quantized):
    family, res, text, mm = quantized
    tq = text_quality(res.text_path, text, n_threads=2)
    # random weights over the real 248k vocabulary: top-1 agreement sits on near-ties (4.7: 0.46 measured at
    # Q4_K_M), so it only has to be far above chance (4e-6). KL grows with the sharpness of the logits: 4.7's are
    # near-flat (entropy ~12 nats, KL 0.06 measured); OCR ties its embeddings, so each token's own row dominates
    # (entropy ~0.3 nats, logit std 5.7) and the same 4-bit rounding costs more (KL 0.78 measured)
    assert tq.n_tokens > 500 and 0 < tq.kl_mean < KL_Q4_K_M[family] and tq.top1 > 0.3, (family, tq)
    q8 = text_quality(res.text_path, quantize_text(res.text_path, text.with_name("text-q8.gguf"), "Q8_0",
                                                   nthread=2).path, n_threads=2)
    assert q8.kl_mean < tq.kl_mean / 5 and q8.top1 > tq.top1, (family, q8, tq)  # the report ranks the types
    vq = vision_quality(res.text_path, res.mmproj_path, mm, n_threads=2)
    assert vq.n_images == 5 and vq.cos_min > 0.99, (family, vq)


def test_quantized_token_rows_equal_llama_cpp_lookup(quantized):
    family, res, text, _ = quantized
    model = Model(str(text))
    rows = TokenRows(str(text))
    ids = model.tokenize("<image></image><slice></slice>\nabc")
    for tok in ids:
        a = Context(model, n_ctx=64, n_batch=8, n_threads=2)
        a.decode([tok])
        b = Context(model, n_ctx=64, n_batch=8, n_threads=2)
        b.decode_embeddings(rows.get(tok)[None], np.zeros((3, 1), np.int64), logits_last=True)
        la, lb = a.logits(), b.logits()
        assert np.abs(la - lb).max() <= 1e-4 * (la.max() - la.min()), (family, tok)
        a.close()
        b.close()
    model.close()


def test_quantized_pair_answers_images(quantized):
    family, res, text, mm = quantized
    m = MiniCPMV(text, mm, n_ctx=4096, n_threads=2)
    try:
        img = Image.fromarray(noise_image(*PHOTO, seed=4))
        r = m.chat([{"role": "user", "content": [img, "What is in the picture?"]}], **GREEDY)
        assert r.usage["completion_tokens"] >= 1 and m.counters.images_encoded >= 2  # overview + slices
    finally:
        m.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_matches_llama_cpp_encoder(store, tmp_path, family):
    from minicpmv_edge.convert.vision_export import export_vision
    from minicpmv_edge.edge_runtime.external_encoder import OnnxVisionEncoder

    res = store.converted(family)
    base = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2)
    spec = base.session.planner.image_spec
    grids = sorted({(h // spec.patch_size, w // spec.patch_size) for w, h in plan_sizes(*PHOTO, spec)[0]})
    export_vision(store.checkpoint(family), tmp_path / "onnx", "onnx", grids=grids, verify=False)
    enc = OnnxVisionEncoder(tmp_path / "onnx", n_threads=2)
    ext = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2, vision_encoder=enc)
    try:
        rgb = noise_image(*PHOTO, seed=5)
        for crop in layout(rgb, spec).crops:
            a = base.vision.encode(crop.pixels)
            b = enc.encode(np.ascontiguousarray(crop.pixels.transpose(2, 0, 1)[None]))
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            assert cos.min() >= 0.999, (family, crop.width, crop.height, cos.min())
        msgs = [{"role": "user", "content": [Image.fromarray(rgb), "What is in the picture?"]}]
        ra, rb = base.chat(msgs, **GREEDY), ext.chat(msgs, **GREEDY)
        assert ra.raw == rb.raw and ra.usage == rb.usage
        assert ext.counters.images_encoded == len(layout(rgb, spec).crops) > 1
    finally:
        base.close()
        ext.close()
