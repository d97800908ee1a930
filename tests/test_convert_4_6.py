"""MiniCPM-V 4.6 (Qwen3.5 text + SigLIP/ViT-merger vision) -> llama.cpp GGUF pair: layout.

Both token modes are converted once per module from the tiny fixture checkpoints; the
file layout must carry the exact key types llama.cpp asserts on. Numerical fidelity
against transformers' own MiniCPMV4_6ForConditionalGeneration (logits, image
embeddings of 64 / 256 tokens) is checked with the other families in test_fidelity.py.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from minicpmv_edge.convert import convert
from minicpmv_edge import schema
from minicpmv_edge.gguf_info import check_pair, read_info

MODES = {"minicpmv-4.6": ("16x", 4, 64), "minicpmv-4.6-4x": ("4x", 2, 256)}

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
    from minicpmv_edge.convert import families

    for fam, path in ckpts.items():
        assert families.detect(families.read_config(path), path).name == "minicpmv-4.6"
