"""The converted GGUF pair computes what the original checkpoint computes.

For every family: next-token logits from llama.cpp on the F16 text GGUF vs the
reference PyTorch forward (max |diff| <= 1% of the logit range, same argmax) on
24 prompts; mtmd's image embeddings for a 448x448 image (no slicing) vs the
reference vision tower + resampler/merger (cosine >= 0.999 for every token).
"""

from __future__ import annotations

import numpy as np
import pytest

from minicpmv_edge.edge_runtime.engine import CHUNK_IMAGE, Bitmap, Context, Model, Vision
from tests.logit_checks import assert_logits_match
from tests.reference import reference_for

FAMILIES = ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5", "minicpmv-4.6", "minicpmv-4.6-4x"]
TEXTS = ["Hello, world!", "图片里有什么？", "def f(x):\n    return x * 2", "The quick brown fox 🦊 jumps",
         "  spaces   and\ttabs\n\nnewlines", "<|im_start|>user\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n",
         "1234567890 + 0.5 = ?", "Ünïcödé façade naïve"]


def prompts(n_vocab_real: int, model: Model) -> list[list[int]]:
    rng = np.random.default_rng(0)
    out = [model.tokenize(t) for t in TEXTS]
    for length in (3, 5, 8, 13, 21, 34, 40, 2, 17, 29, 11, 7, 25, 37, 19, 4):
        out.append(rng.integers(0, n_vocab_real, size=length).tolist())
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, store):
    family = request.param
    res = store.converted(family)
    ref = reference_for(family)(res.manifest.source)
    model = Model(str(res.text_path))
    yield family, res, ref, model
    model.close()


def test_text_logits_match_reference(pair):
    family, res, ref, model = pair
    ctx = Context(model, n_ctx=256, n_batch=64, n_threads=2)
    n_real = min(model.n_vocab, ref.n_vocab_real if hasattr(ref, "n_vocab_real") else model.n_vocab)
    checked = 0
    for toks in prompts(n_real, model):
        ctx.clear()
        ctx.decode(toks)
        got = ctx.logits()
        want = ref.next_token_logits(toks)
        assert got.shape == want.shape, family
        assert_logits_match(got, want, f"{family} {toks[:8]}")
        checked += 1
    assert checked >= 16
    ctx.close()


def test_image_embeddings_match_reference(pair):
    family, res, ref, model = pair
    vision = Vision(str(res.mmproj_path), model, n_threads=2)
    rgb = np.random.default_rng(1).integers(0, 256, size=(448, 448, 3), dtype=np.uint8)
    chunks = vision.tokenize(f"look: {vision.marker} done", [Bitmap(rgb)])
    images = [i for i in range(len(chunks)) if chunks.kind(i) == CHUNK_IMAGE]
    assert len(images) == 1, "a 448x448 image must not be sliced"
    got = vision.encode_chunk(chunks[images[0]])
    want = ref.image_embeddings(rgb)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.shape[0] == {"minicpmv-4.6-4x": 256}.get(family, 64)  # tokens per 448x448 slice
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= 0.999, f"{family}: worst token cosine {cos.min():.5f}"
    chunks.close()
    vision.close()
