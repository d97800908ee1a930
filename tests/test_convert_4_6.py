"""MiniCPM-V 4.6 (Qwen3.5 text + SigLIP/ViT-merger vision) -> llama.cpp GGUF pair.

Both token modes are converted once per module from the tiny fixture
checkpoints. The pair must load in llama.cpp (libllama + mtmd) and compute what
transformers' own MiniCPMV4_6ForConditionalGeneration computes: next-token
logits within 1% of the reference logit range with the same argmax, image
embeddings of a 448x448 image with cosine >= 0.999 per token (64 tokens in
16x mode, 256 in 4x mode). The file layout must carry the exact key types
llama.cpp asserts on.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from convert import convert
from edge_runtime.engine import CHUNK_IMAGE, Bitmap, Context, Model, Vision
from minicpmv_edge import schema
from minicpmv_edge.gguf_info import check_pair, read_info

MODES = {"minicpmv-4.6": ("16x", 4, 64), "minicpmv-4.6-4x": ("4x", 2, 256)}
TEXTS = ["Hello, world!", "图片里有什么？", "def f(x):\n    return x * 2", "The quick brown fox 🦊 jumps",
         "<|im_start|>user\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
         "1234567890 + 0.5 = ?", "Ünïcödé façade naïve", "  spaces   and\ttabs\n\nnewlines"]
RANDOM_LENGTHS = (3, 4, 5, 7, 8, 11, 13, 17, 19, 21, 25, 29, 34, 37, 40, 6)

# GGUF value type codes (ggml/src/gguf.cpp)
UINT32, INT32, BOOL, ARRAY = 4, 5, 7, 9


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from minicpmv_edge.fixtures import make_checkpoint

    root = tmp_path_factory.mktemp("ckpt46")
    return {fam: make_checkpoint(fam, root / fam, seed=0) for fam in MODES}


@pytest.fixture(scope="module")
def converted(ckpts, tmp_path_factory):
    root = tmp_path_factory.mktemp("out46")
    return {fam: convert(path, root / fam, outtype="f16") for fam, path in ckpts.items()}


@pytest.fixture(scope="module", params=list(MODES))
def loaded(request, ckpts, converted):
    from tests.reference.minicpmv_4_6 import Reference

    fam = request.param
    res = converted[fam]
    model = Model(str(res.text_path))
    yield fam, res, Reference(ckpts[fam]), model
    model.close()


def _array_type(path, key):
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields[key]
    return [int(t) for t in field.types]


@pytest.mark.parametrize("fam", list(MODES))
def test_pair_layout(fam, converted):
    mode, scale, tokens = MODES[fam]
    res = converted[fam]
    text, mm = check_pair(res.text_path, res.mmproj_path)  # raises on any pairing problem
    assert res.manifest.family == "minicpmv-4.6"
    assert text.arch == "qwen35"
    # text hparams llama.cpp's qwen35 loader reads (src/models/qwen35.cpp)
    assert text.get("qwen35.block_count") == 2
    assert text.kv_types["qwen35.ssm.group_count"] == UINT32 and text.get("qwen35.ssm.group_count") == 2
    assert text.get("qwen35.ssm.time_step_rank") == 4
    assert text.get("qwen35.ssm.state_size") == 32
    assert text.get("qwen35.ssm.inner_size") == 128
    assert text.get("qwen35.ssm.conv_kernel") == 4
    assert text.get("qwen35.attention.recurrent_layers") == [True, False]
    assert _array_type(res.text_path, "qwen35.attention.recurrent_layers") == [ARRAY, BOOL]
    assert text.get("qwen35.rope.dimension_sections") == [2, 1, 1, 0]
    assert text.get("qwen35.rope.dimension_count") == 8  # head_dim 32 * partial_rotary_factor 0.25
    assert text.get("qwen35.full_attention_interval") == 4
    assert text.get("qwen35.attention.key_length") == 32
    assert text.get("tokenizer.ggml.pre") == "qwen35"
    assert text.get(schema.EDGE_PROJECTOR_TYPE) == schema.PROJECTOR_MINICPMV4_6
    assert text.get(schema.EDGE_THINK_SUPPORTED) is True
    assert text.get(schema.EDGE_THINK_PREFIX_OFF) == "<think>\n\n</think>\n\n"
    assert text.get(schema.EDGE_TOKENS_PER_SLICE) == tokens
    names = {t.name: t for t in text.tensors}
    assert names["blk.0.ssm_conv1d.weight"].shape == (4, 256) and names["blk.0.ssm_conv1d.weight"].ggml_type == 0
    assert "blk.0.ssm_a" in names and "blk.0.ssm_dt.bias" in names and "blk.1.attn_q_norm.weight" in names
    # projector keys with the exact types clip.cpp asserts on
    assert mm.get(schema.CLIP_PROJECTOR_TYPE) == "minicpmv4_6"
    assert mm.get("general.type") == "mmproj"
    assert mm.kv_types[schema.CLIP_SCALE_FACTOR_U32] == UINT32 and mm.get(schema.CLIP_SCALE_FACTOR_U32) == scale
    assert mm.kv_types["clip.vision.wa_layer_indexes"] == ARRAY
    assert _array_type(res.mmproj_path, "clip.vision.wa_layer_indexes") == [ARRAY, INT32]
    assert mm.get("clip.vision.wa_layer_indexes") == [1]
    assert mm.get("clip.vision.image_size") == 448
    assert mm.get("clip.vision.projection_dim") == 128
    assert mm.get("clip.vision.block_count") == 3
    assert mm.get("clip.use_gelu") is True and mm.get("clip.has_vision_encoder") is True
    assert mm.get("clip.vision.image_mean") == [0.5, 0.5, 0.5]
    assert mm.get(schema.EDGE_DOWNSAMPLE_MODE) == mode
    mnames = {t.name: t for t in mm.tensors}
    assert mnames["v.position_embd.weight"].shape == (64, 4900) and mnames["v.position_embd.weight"].ggml_type == 0
    assert mnames["v.patch_embd.weight"].ggml_type == 1  # F16
    assert mnames["mm.down.weight"].ggml_type == 1 and mnames["mm.input_norm.weight"].ggml_type == 0
    assert "v.post_ln.weight" in mnames and "v.blk.2.ffn_up.weight" in mnames
    merger = sorted(n for n in mnames if n.startswith("v.vit_merger."))
    if mode == "16x":
        assert len(merger) == 16 and "v.vit_merger.ds_ffn_up.weight" in merger
    else:
        assert merger == []  # consumed, not written: 4x never runs the ViT merger


def _prompts(model: Model, ckpt) -> list[list[int]]:
    tj = json.loads((ckpt / "tokenizer.json").read_text(encoding="utf-8"))
    n_real = max([*tj["model"]["vocab"].values(), *(t["id"] for t in tj["added_tokens"])]) + 1
    rng = np.random.default_rng(0)
    out = [model.tokenize(t) for t in TEXTS]
    out += [rng.integers(0, n_real, size=n).tolist() for n in RANDOM_LENGTHS]
    return out


def test_text_logits_match_reference(loaded, ckpts):
    fam, res, ref, model = loaded
    ctx = Context(model, n_ctx=256, n_batch=64, n_threads=2)
    checked = 0
    worst = 0.0
    for toks in _prompts(model, ckpts[fam]):
        assert toks
        ctx.clear()
        ctx.decode(toks)
        got = ctx.logits()
        want = ref.next_token_logits(toks)
        assert got.shape == want.shape
        span = float(want.max() - want.min())
        err = float(np.abs(got - want).max())
        worst = max(worst, err / span)
        assert err <= 0.01 * span, f"{fam}: max |diff| {err:.4g} > 1% of range {span:.4g} for {toks[:8]}"
        assert int(got.argmax()) == int(want.argmax()), f"{fam}: argmax differs for {toks[:8]}"
        checked += 1
    assert checked >= 16
    print(f"{fam}: worst logit diff {worst:.3e} of range over {checked} prompts")
    ctx.close()


def test_image_embeddings_match_reference(loaded):
    fam, res, ref, model = loaded
    _, _, n_tokens = MODES[fam]
    vision = Vision(str(res.mmproj_path), model, n_threads=2)
    try:
        rgb = np.random.default_rng(1).integers(0, 256, size=(448, 448, 3), dtype=np.uint8)
        chunks = vision.tokenize(f"look: {vision.marker} done", [Bitmap(rgb)])
        images = [i for i in range(len(chunks)) if chunks.kind(i) == CHUNK_IMAGE]
        assert len(images) == 1, "a 448x448 image must not be sliced"
        assert chunks.n_tokens(images[0]) == n_tokens
        got = vision.encode_chunk(chunks[images[0]])
        want = ref.image_embeddings(rgb)
        assert got.shape == want.shape == (n_tokens, 128)
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cos.min() >= 0.999, f"{fam}: worst token cosine {cos.min():.6f}"
        print(f"{fam}: image cosine min {cos.min():.7f} mean {cos.mean():.7f}")
        chunks.close()
    finally:
        vision.close()


def test_mtp_tensors_are_consumed_not_written(ckpts, tmp_path):
    """Multi-token-prediction weights (published 4.6 checkpoints may carry them) are
    deliberately skipped, like llama.cpp's converter does, not reported as unmapped."""
    from safetensors.numpy import save_file

    src = tmp_path / "ckpt"
    shutil.copytree(ckpts["minicpmv-4.6"], src)
    assert not (src / "model.safetensors.index.json").exists()
    save_file({"mtp.fc.weight": np.zeros((128, 256), np.float32),
               "mtp.layers.0.input_layernorm.weight": np.zeros((128,), np.float32)},
              str(src / "model-mtp.safetensors"))
    res = convert(src, tmp_path / "out", outtype="f16")
    names = {t.name for t in read_info(res.text_path).tensors}
    assert not any("mtp" in n or "nextn" in n for n in names)
    assert read_info(res.text_path).get("qwen35.block_count") == 2


def test_family_is_detected(ckpts):
    from convert import families

    for fam, path in ckpts.items():
        assert families.detect(families.read_config(path), path).name == "minicpmv-4.6"
