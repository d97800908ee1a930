"""The converted files have exactly the layout llama.cpp's loaders need.

Each check below is a trap from ../shared/reference/llama-cpp-minicpmv.md that
would make llama.cpp abort, mis-compute silently, or refuse the file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType

from minicpmv_edge.convert.safetensors_reader import Checkpoint
from minicpmv_edge import model_facts, schema
from minicpmv_edge.gguf_info import check_pair, read_info

RESAMPLER_FAMILIES = ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5"]


def tensor(reader: GGUFReader, name: str):
    for t in reader.tensors:
        if t.name == name:
            return t
    raise KeyError(name)


def as_f32(t) -> np.ndarray:
    from gguf.quants import dequantize

    shape = tuple(int(x) for x in reversed(t.shape))
    return dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)


@pytest.mark.parametrize("family", RESAMPLER_FAMILIES)
def test_resampler_mmproj_layout(store, family):
    res = store.converted(family)
    ck = Checkpoint(res.manifest.source)
    mm = GGUFReader(res.mmproj_path)
    f = mm.fields
    assert f[schema.CLIP_MINICPMV_VERSION_I32].types == [GGUFValueType.INT32]
    assert f[schema.CLIP_MINICPMV_QUERY_NUM_U32].types == [GGUFValueType.UINT32]
    assert f[schema.CLIP_IMAGE_SIZE].contents() == 448
    want_version = {"minicpmv-2.6": 3, "minicpmv-4.0": 5, "minicpmv-4.5": 6}[family]
    assert f[schema.CLIP_MINICPMV_VERSION_I32].contents() == want_version
    # proj is used as x @ proj in HF: llama.cpp wants it transposed, named .weight
    proj = as_f32(tensor(mm, "resampler.proj.weight"))
    np.testing.assert_allclose(proj, ck.load("resampler.proj").T, rtol=1e-3, atol=1e-3)
    # in_proj split into q, k, v
    inw = ck.load("resampler.attn.in_proj_weight")
    E = inw.shape[1]
    for j, part in enumerate("qkv"):
        np.testing.assert_allclose(as_f32(tensor(mm, f"resampler.attn.{part}.weight")), inw[j * E:(j + 1) * E],
                                   rtol=1e-3, atol=1e-3)
    # pos_embed_k present (the loader requires it), spelt as clip.cpp spells it
    assert tensor(mm, "resampler.pos_embed_k").tensor_type == Q.F32
    assert tuple(tensor(mm, "resampler.pos_embed_k").shape) == (E, 4900)
    assert tensor(mm, "resampler.query").tensor_type == Q.F32  # no .weight suffix -> F32
    # fc1 is the up projection (n_embd -> n_ff)
    up = tensor(mm, "v.blk.0.ffn_up.weight")
    np.testing.assert_allclose(as_f32(up), ck.load("vpm.encoder.layers.0.mlp.fc1.weight"), rtol=1e-3, atol=1e-3)
    for t in mm.tensors:
        if len(t.shape) == 1 or "ln" in t.name or "position_embd" in t.name:
            assert t.tensor_type == Q.F32, t.name
        assert t.tensor_type != Q.BF16, t.name
    assert tensor(mm, "v.position_embd.weight").shape[1] == 4900
    assert tensor(mm, "v.patch_embd.weight").tensor_type == Q.F16


@pytest.mark.parametrize("family", RESAMPLER_FAMILIES + ["minicpmv-4.6"])
def test_text_vocab_and_metadata(store, family):
    res = store.converted(family)
    info = read_info(res.text_path)
    cfg = json.loads((res.manifest.source and open(res.manifest.source + "/config.json").read()))
    n_vocab = cfg.get("vocab_size") or cfg["text_config"]["vocab_size"]
    assert info.array_lengths["tokenizer.ggml.tokens"] == n_vocab  # padded to the embedding rows
    tok_embd = info.tensor("token_embd.weight")
    assert tok_embd.shape[1] == n_vocab
    pre = {"minicpmv-2.6": "qwen2", "minicpmv-4.5": "qwen2", "minicpmv-4.6": "qwen35", "minicpmv-4.0": None}[family]
    assert info.get("tokenizer.ggml.pre") == pre
    assert info.get(schema.EDGE_FAMILY) == family
    assert info.get("tokenizer.chat_template")
    # every per-family fact (minicpmv_edge/model_facts.py) is written; the family-specific extras
    # (downsample mode, canvas ids, OCR upsizing) are checked by their families' tests
    for key, _ in model_facts.KEYS.values():
        assert key in info.kv, key
    for key in (schema.EDGE_SCHEMA_VERSION, schema.EDGE_TOOL_VERSION, schema.EDGE_SOURCE, schema.EDGE_PROMPT_FORMAT):
        assert key in info.kv, key
    check_pair(res.text_path, res.mmproj_path)
    manifest = json.loads((res.text_path.parent / "manifest.json").read_text())
    assert manifest["family"] == family and manifest["text"] == res.text_path.name
    assert set(manifest["files"]) == {res.text_path.name, res.mmproj_path.name}


def test_sharded_checkpoint_gives_identical_tensors(store, tmp_path):
    from minicpmv_edge.convert import convert

    single = store.converted("minicpmv-4.5")
    sharded = convert(store.checkpoint("minicpmv-4.5", shards=3), tmp_path / "sharded")
    for a_path, b_path in ((single.text_path, sharded.text_path), (single.mmproj_path, sharded.mmproj_path)):
        a, b = GGUFReader(a_path), GGUFReader(b_path)
        assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
        for ta, tb in zip(a.tensors, b.tensors):
            assert ta.tensor_type == tb.tensor_type and np.array_equal(ta.data, tb.data), ta.name


@pytest.mark.parametrize("outtype,qtype", [("bf16", Q.BF16), ("q8_0", Q.Q8_0), ("f32", Q.F32)])
def test_outtypes_load_and_run_in_llama_cpp(store, tmp_path, outtype, qtype):
    from minicpmv_edge.convert import convert
    from minicpmv_edge.edge_runtime.engine import Context, Model

    res = convert(store.checkpoint("minicpmv-4.5"), tmp_path / outtype, outtype=outtype)
    r = GGUFReader(res.text_path)
    assert tensor(r, "blk.0.ffn_up.weight").tensor_type == qtype
    assert tensor(r, "blk.0.attn_norm.weight").tensor_type == Q.F32
    assert all(t.tensor_type != Q.BF16 for t in GGUFReader(res.mmproj_path).tensors)
    ref = store.converted("minicpmv-4.5")
    logits = []
    for path in (ref.text_path, res.text_path):
        m = Model(str(path))
        c = Context(m, n_ctx=64, n_batch=32, n_threads=2)
        c.decode([1, 2, 3, 4, 5])
        logits.append(c.logits())
        c.close()
        m.close()
    span = float(logits[0].max() - logits[0].min())
    assert np.abs(logits[0] - logits[1]).max() <= 0.05 * span
