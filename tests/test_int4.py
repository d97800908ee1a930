"""int4 checkpoints (GPTQ, AWQ): lossless Q4_0/Q4_1 repack, dequantize fallbacks, results run in llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import dequantize

from minicpmv_edge.convert import convert
from minicpmv_edge.errors import UnsupportedModelError
from minicpmv_edge.quantize.int4 import AWQ_ORDER, Int4Config, repack, unpack_awq, unpack_gptq
from minicpmv_edge.quantize.int4_pack import dequant, make_int4_checkpoint, pack_awq, pack_gptq, rtn

LINEAR = "llm.model.layers.{i}.{kind}.weight"
NAMES = {"blk.{i}.attn_q.weight": "self_attn.q_proj", "blk.{i}.ffn_down.weight": "mlp.down_proj",
         "blk.{i}.ffn_up.weight": "mlp.up_proj"}


def written(path) -> dict:
    out = {}
    for t in GGUFReader(path).tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        arr = np.asarray(t.data)
        out[t.name] = (Q(t.tensor_type), (arr.astype(np.float32) if t.tensor_type in (Q.F32, Q.F16)
                                          else dequantize(arr, Q(t.tensor_type))).reshape(shape))
    return out


def runs(path):
    from minicpmv_edge.edge_runtime.engine import Context, Model

    m = Model(str(path))
    c = Context(m, n_ctx=64, n_batch=64, n_threads=1)
    c.decode(m.tokenize("The cat 猫 sat"))
    assert np.all(np.isfinite(c.logits()))
    c.close()
    m.close()


def check(res, ref, want_type, atol_rel):
    got = written(res.text_path)
    for i in range(2):
        for gname, kind in NAMES.items():
            ty, arr = got[gname.format(i=i)]
            exp = ref[LINEAR.format(i=i, kind=kind)]
            assert ty == want_type, (gname, ty)
            tol = atol_rel * np.abs(exp).max()
            assert np.abs(arr - exp).max() <= tol, (gname, np.abs(arr - exp).max(), tol)


def test_gptq_symmetric_repack_is_exact(store, tmp_path):
    ref = make_int4_checkpoint(store.checkpoint("minicpmv-4.5"), tmp_path / "ck", "gptq", sym=True, group=32)
    res = convert(tmp_path / "ck", tmp_path / "out")
    check(res, ref, Q.Q4_0, 0.0)  # Q4_0 holds GPTQ's (q-8)*scale exactly: scales are fp16 already
    assert res.manifest.quant["int4"]["repacked"] == 14 and res.manifest.quant["int4"]["dequantized"] == 0
    runs(res.text_path)


@pytest.mark.parametrize("v2,group", [(False, 32), (True, 64)])
def test_gptq_asymmetric_repack(store, tmp_path, v2, group):
    ref = make_int4_checkpoint(store.checkpoint("minicpmv-4.5"), tmp_path / "ck", "gptq", sym=False, v2=v2,
                               group=group)
    res = convert(tmp_path / "ck", tmp_path / "out")
    check(res, ref, Q.Q4_1, 2.0 ** -10)  # only m = -z*scale is rounded to fp16
    assert res.manifest.quant["int4"]["repacked_types"] == ["Q4_1"]
    runs(res.text_path)


def test_gptq_act_order_dequantizes(store, tmp_path, caplog):
    ref = make_int4_checkpoint(store.checkpoint("minicpmv-4.5"), tmp_path / "ck", "gptq", desc_act=True)
    res = convert(tmp_path / "ck", tmp_path / "out")
    check(res, ref, Q.F16, 2.0 ** -10)  # permuted groups cannot tile blocks: float (F16) path
    assert res.manifest.quant["int4"]["dequantized"] == 14 and "dequantized" in caplog.text
    runs(res.text_path)


def test_awq_repack_and_quant(store, tmp_path):
    ref = make_int4_checkpoint(store.checkpoint("minicpmv-4.5"), tmp_path / "ck", "awq", group=32)
    res = convert(tmp_path / "ck", tmp_path / "out")
    check(res, ref, Q.Q4_1, 2.0 ** -10)
    res = convert(tmp_path / "ck", tmp_path / "q", quant="Q4_K_M")  # repacked blocks survive llama.cpp's pass
    check(res, ref, Q.Q4_1, 2.0 ** -10)
    assert res.text_path.name.endswith("q4_k_m.gguf")
    runs(res.text_path)


def test_unpackers_match_published_layouts():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    q, z, s, g = rtn(w, 32, sym=False, perm=rng.permutation(128))
    for v2 in (False, True):
        p = pack_gptq(q, z, s, g, v2)
        u = unpack_gptq(p["qweight"], p["qzeros"], p["scales"], p["g_idx"], Int4Config("gptq", 4, 32, True, v2))
        assert np.array_equal(u.q, q) and np.array_equal(u.zeros, z)
        assert np.array_equal(u.dequantize(), dequant(q, z, s, g))
        assert u.block_group_size() is None  # act-order: not repackable
    q, z, s, g = rtn(w, 32, sym=False)
    p = pack_awq(q, z, s)
    # nibble p of the first int32 is column AWQ_ORDER[p]
    assert [(int(p["qweight"][0, 0]) >> (4 * k)) & 15 for k in range(8)] == [int(q[0, AWQ_ORDER[k]]) for k in range(8)]
    u = unpack_awq(p["qweight"], p["qzeros"], p["scales"], Int4Config("awq", 4, 32))
    qtype, raw = repack(u)
    assert qtype == Q.Q4_1 and raw.shape == (64, 4 * 20)
    assert np.abs(dequantize(raw, Q.Q4_1).reshape(64, 128) - dequant(q, z, s, g)).max() <= 2 ** -10 * np.abs(w).max()


def test_unsupported_quant_methods():
    with pytest.raises(UnsupportedModelError, match="bitsandbytes"):
        Int4Config.from_config({"quantization_config": {"quant_method": "bitsandbytes"}})
    with pytest.raises(UnsupportedModelError, match="3 bits"):
        Int4Config.from_config({"quantization_config": {"quant_method": "gptq", "bits": 3}})
    assert Int4Config.from_config({"text_config": {"quantization_config": {"quant_method": "awq"}}}).method == "awq"
