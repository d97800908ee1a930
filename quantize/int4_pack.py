"""Make GPTQ / AWQ checkpoints from an ordinary one (tests and benchmarks).

Written from the published formats (AutoGPTQ `QuantLinear.pack`, AutoAWQ
`WQLinear_GEMM.from_linear`), independent of quantize.int4's unpacker: a plain
round-to-nearest per-group quantizer, then packing. `make_int4_checkpoint`
returns the exact dequantized weights each packed tensor stands for, so a test
can compare what a conversion wrote against them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
DEFAULT_LINEARS = r"(llm\.model|model\.language_model)\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight$"


def rtn(w: np.ndarray, group: int, sym: bool, perm: np.ndarray | None = None):
    """w [out, in] -> q [in, out] uint8, zeros/scales [groups, out], g_idx [in] (4 bits)."""
    n_out, n_in = w.shape
    order = np.arange(n_in) if perm is None else perm
    g_idx = np.empty(n_in, np.int64)
    g_idx[order] = np.arange(n_in) // group
    n_groups = n_in // group
    scales = np.zeros((n_groups, n_out), np.float16)
    zeros = np.zeros((n_groups, n_out), np.int64)
    q = np.zeros((n_in, n_out), np.uint8)
    for g in range(n_groups):
        cols = order[g * group:(g + 1) * group]
        blk = w[:, cols].astype(np.float32)  # [out, group]
        if sym:
            s = np.maximum(np.abs(blk).max(1), 1e-8) / 7.5
            z = np.full(n_out, 8)
        else:
            lo, hi = np.minimum(blk.min(1), 0), np.maximum(blk.max(1), 0)
            s = np.maximum(hi - lo, 1e-8) / 15
            z = np.clip(np.round(-lo / s), 1, 15).astype(np.int64)  # >= 1 keeps GPTQ v1's zeros-1 >= 0
        s16 = s.astype(np.float16)
        qq = np.clip(np.round(blk / s16.astype(np.float32)[:, None]) + z[:, None], 0, 15)
        q[cols] = qq.T.astype(np.uint8)
        scales[g], zeros[g] = s16, z
    return q, zeros, scales, g_idx


def dequant(q, zeros, scales, g_idx) -> np.ndarray:
    return (scales.astype(np.float32)[g_idx] * (q.astype(np.float32) - zeros[g_idx])).T


def _pack_rows(v: np.ndarray) -> np.ndarray:  # [n, m] 4-bit -> int32 [n/8, m]
    v = v.astype(np.uint32).reshape(v.shape[0] // 8, 8, v.shape[1])
    out = np.zeros((v.shape[0], v.shape[2]), np.uint32)
    for k in range(8):
        out |= v[:, k] << np.uint32(4 * k)
    return out.view(np.int32)


def _pack_cols(v: np.ndarray, order=tuple(range(8))) -> np.ndarray:  # [n, m] -> int32 [n, m/8]
    v = v.astype(np.uint32).reshape(v.shape[0], v.shape[1] // 8, 8)
    out = np.zeros(v.shape[:2], np.uint32)
    for p in range(8):
        out |= v[:, :, order[p]] << np.uint32(4 * p)
    return out.view(np.int32)


def pack_gptq(q, zeros, scales, g_idx, v2: bool = False) -> dict[str, np.ndarray]:
    stored = zeros if v2 else zeros - 1
    return {"qweight": _pack_rows(q), "qzeros": _pack_cols(stored & 15), "scales": scales,
            "g_idx": g_idx.astype(np.int32)}


def pack_awq(q, zeros, scales) -> dict[str, np.ndarray]:
    return {"qweight": _pack_cols(q, AWQ_ORDER), "qzeros": _pack_cols(zeros, AWQ_ORDER), "scales": scales}


def make_int4_checkpoint(src: str | Path, dst: str | Path, method: str = "gptq", *, sym: bool = True,
                         group: int = 32, desc_act: bool = False, v2: bool = False,
                         pattern: str = DEFAULT_LINEARS, seed: int = 0) -> dict[str, np.ndarray]:
    """Copy checkpoint `src` to `dst` with every linear matching `pattern` in int4.

    Returns {source weight name: float32 [out, in]} of the exact values packed."""
    import torch
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy(f, dst / f.name)
    state: dict = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(f))
    rng = np.random.default_rng(seed)
    out, ref = {}, {}
    for name, t in state.items():
        if not re.search(pattern, name):
            out[name] = t
            continue
        w = t.float().numpy()
        perm = rng.permutation(w.shape[1]) if desc_act else None
        q, z, s, g = rtn(w, group, sym if method == "gptq" else False, perm)
        ref[name] = dequant(q, z, s, g)
        parts = pack_gptq(q, z, s, g, v2) if method == "gptq" else pack_awq(q, z, s)
        base = name[: -len(".weight")]
        for k, v in parts.items():
            out[f"{base}.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
    save_file({k: v.contiguous() for k, v in out.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    if method == "gptq":
        qc = {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": desc_act, "sym": sym,
              "checkpoint_format": "gptq_v2" if v2 else "gptq"}
    else:
        qc = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"}
    cfg["quantization_config"] = qc
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return ref
