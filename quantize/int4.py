"""Pre-quantized int4 checkpoints (GPTQ, AWQ): unpack, dequantize, and repack into GGUF blocks.

Formats, from their published packers:

* GPTQ (AutoGPTQ / GPTQModel): `qweight` int32 [in/(32/b), out], input rows
  packed low nibble first; `qzeros` int32 [groups, out/(32/b)], packed the same
  way along the output; `scales` fp16 [groups, out]; `g_idx` int32 [in] (the
  group of each input row; permuted under act-order / desc_act). Weight =
  scales[g_idx] * (q - zeros[g_idx]), where v1 files store zeros-1
  (`checkpoint_format` "gptq", the default) and v2 files store them as is
  (llama.cpp conversion/base.py:366-406,476-497).
* AWQ (AutoAWQ GEMM): `qweight` int32 [in, out/8], `qzeros` int32
  [groups, out/8]; the 8 nibbles of each int32 hold output columns in the order
  [0, 2, 4, 6, 1, 3, 5, 7]; `scales` fp16 [groups, out]; group of row i is
  i // group_size. Weight = scales * (q - zeros), zeros stored as is.

Lossless repack: when a tensor's groups tile whole 32-element GGUF blocks (4
bits, group size a multiple of 32, no act-order permutation), each block has
one scale and one zero, which is exactly Q4_0 (value = (q-8)*d, when every zero
is 8: symmetric) or Q4_1 (value = q*d + m with m = -zero*scale). The nibbles
move over unchanged; the only loss is fp16 rounding of m for Q4_1 (scales are
fp16 already). Everything else is dequantized to float and goes on at the
conversion's output type, which is logged and recorded in the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as Q

from minicpmv_edge.errors import CheckpointError, UnsupportedModelError

log = logging.getLogger(__name__)

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble p of an AWQ int32 holds column AWQ_ORDER[p] of its 8
_PARTS = ("qweight", "qzeros", "scales", "g_idx")


@dataclass(frozen=True)
class Int4Config:
    method: str  # "gptq" | "awq"
    bits: int
    group_size: int  # -1: one group per row
    desc_act: bool = False
    v2: bool = False  # GPTQ checkpoint_format gptq_v2: zeros stored as is

    @classmethod
    def from_config(cls, config: dict) -> "Int4Config | None":
        qc = config.get("quantization_config")
        if not isinstance(qc, dict):
            tc = config.get("text_config")
            qc = tc.get("quantization_config") if isinstance(tc, dict) else None
        if not isinstance(qc, dict):
            return None
        method = str(qc.get("quant_method", "")).lower()
        if method not in ("gptq", "awq"):
            raise UnsupportedModelError(f"quant_method {method!r} is not supported (only gptq and awq); "
                                        "convert the unquantized checkpoint instead")
        bits = int(qc.get("bits", qc.get("w_bit", 4)))
        group = int(qc.get("group_size", qc.get("q_group_size", 128)))
        if method == "awq":
            if bits != 4:
                raise UnsupportedModelError(f"AWQ with {bits} bits is not supported (4 only)")
            if str(qc.get("version", "gemm")).lower() != "gemm":
                raise UnsupportedModelError(f"AWQ version {qc.get('version')!r} is not supported (gemm only)")
            return cls("awq", 4, group)
        if bits not in (2, 4, 8):
            raise UnsupportedModelError(f"GPTQ with {bits} bits is not supported (2, 4 or 8)")
        fmt = str(qc.get("checkpoint_format", "gptq")).lower()
        return cls("gptq", bits, group, bool(qc.get("desc_act", False)), fmt == "gptq_v2")


def _unpack_rows(packed: np.ndarray, bits: int) -> np.ndarray:
    """int32 [n/(32/b), m] -> uint8 [n, m]: packed along axis 0, low bits first."""
    per = 32 // bits
    p = packed.astype(np.uint32)
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, :, None]
    out = (p[:, None, :] >> shifts) & np.uint32((1 << bits) - 1)
    return out.reshape(p.shape[0] * per, p.shape[1]).astype(np.uint8)


def _unpack_cols(packed: np.ndarray, bits: int, order: tuple[int, ...] | None = None) -> np.ndarray:
    """int32 [n, m/(32/b)] -> uint8 [n, m]: packed along axis 1; `order[p]` = column of nibble p."""
    per = 32 // bits
    p = packed.astype(np.uint32)
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, None, :]
    vals = ((p[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)).astype(np.uint8)  # [n, m/per, nibble]
    if order is not None:
        cols = np.empty_like(vals)
        cols[:, :, list(order)] = vals
        vals = cols
    return vals.reshape(p.shape[0], p.shape[1] * per)


@dataclass
class Unpacked:
    """One int4 linear: q [in, out], zeros and scales [groups, out], g_idx [in]."""

    q: np.ndarray
    zeros: np.ndarray
    scales: np.ndarray  # float16
    g_idx: np.ndarray
    bits: int

    def dequantize(self) -> np.ndarray:
        """-> float32 [out, in] (the layout of an ordinary nn.Linear weight)."""
        s = self.scales.astype(np.float32)[self.g_idx]  # [in, out]
        z = self.zeros.astype(np.float32)[self.g_idx]
        return np.ascontiguousarray((s * (self.q.astype(np.float32) - z)).T)

    def block_group_size(self) -> int | None:
        """Group size if groups tile 32-element blocks in order (repackable), else None."""
        n_in, n_groups = self.q.shape[0], self.scales.shape[0]
        if self.bits != 4 or n_in % 32 or n_in % n_groups:
            return None
        g = n_in // n_groups
        if g % 32 or not np.array_equal(self.g_idx, np.arange(n_in) // g):
            return None
        return g


def unpack_gptq(qweight, qzeros, scales, g_idx, cfg: Int4Config) -> Unpacked:
    q = _unpack_rows(qweight, cfg.bits)
    z = _unpack_cols(qzeros, cfg.bits).astype(np.int16)
    if not cfg.v2:
        z = z + 1  # v1 stores zeros-1 (conversion/base.py: "zeros + 1" unless gptq_v2)
    n_in = q.shape[0]
    if g_idx is None:
        g = n_in if cfg.group_size <= 0 else cfg.group_size
        g_idx = np.arange(n_in) // g
    return Unpacked(q, z[:, : scales.shape[1]], np.asarray(scales, dtype=np.float16), np.asarray(g_idx, np.int64),
                    cfg.bits)


def unpack_awq(qweight, qzeros, scales, cfg: Int4Config) -> Unpacked:
    q = _unpack_cols(qweight, 4, AWQ_ORDER)
    z = _unpack_cols(qzeros, 4, AWQ_ORDER).astype(np.int16)
    n_in = q.shape[0]
    g = n_in if cfg.group_size <= 0 else cfg.group_size
    return Unpacked(q, z, np.asarray(scales, dtype=np.float16), np.arange(n_in) // g, 4)


def repack(u: Unpacked) -> tuple[Q, np.ndarray]:
    """Lossless int4 -> Q4_0 (all zeros 8) or Q4_1 bytes, [out, in/32 * block bytes] uint8."""
    g = u.block_group_size()
    if g is None:
        raise ValueError("groups do not tile 32-element blocks")
    n_in, n_out = u.q.shape
    nb = n_in // 32
    qt = u.q.T.reshape(n_out, nb, 32)
    nibbles = (qt[:, :, :16] | (qt[:, :, 16:] << 4)).astype(np.uint8)  # byte j: elements j (low), j+16 (high)
    blk_group = (np.arange(nb) * 32) // g
    d = u.scales[blk_group].T  # [out, nb] fp16
    z = u.zeros[blk_group].T
    if np.all(u.zeros == 8):
        return Q.Q4_0, np.concatenate([d.astype("<f2")[..., None].view(np.uint8), nibbles], axis=-1).reshape(n_out, -1)
    m = (-z.astype(np.float32) * d.astype(np.float32)).astype("<f2")
    head = np.concatenate([d.astype("<f2")[..., None], m[..., None]], axis=-1).view(np.uint8)
    return Q.Q4_1, np.concatenate([head, nibbles], axis=-1).reshape(n_out, -1)


@dataclass
class Int4Report:
    method: str
    bits: int
    group_size: int
    desc_act: bool
    repacked: dict[str, str] = field(default_factory=dict)  # GGUF name -> Q4_0 / Q4_1
    dequantized: list[str] = field(default_factory=list)  # GGUF names written from dequantized floats

    def as_dict(self) -> dict:
        return {"method": self.method, "bits": self.bits, "group_size": self.group_size, "desc_act": self.desc_act,
                "repacked": len(self.repacked), "repacked_types": sorted(set(self.repacked.values())),
                "dequantized": len(self.dequantized), "dequantized_examples": self.dequantized[:4]}


class Int4Checkpoint:
    """A Checkpoint view in which every int4 linear `X.{qweight,...}` appears as a float `X.weight`.

    Family modules plan against it unchanged; `plan_repack` afterwards swaps the
    eligible planned tensors for their lossless block encoding.
    """

    def __init__(self, ckpt, cfg: Int4Config):
        self._c = ckpt
        self.cfg = cfg
        self.dir = ckpt.dir
        prefixes = sorted(n[: -len(".qweight")] for n in ckpt.names() if n.endswith(".qweight"))
        if not prefixes:
            raise CheckpointError(f"config.json says {cfg.method} but no tensor is named *.qweight", ckpt.dir)
        self.int4 = {p + ".weight": p for p in prefixes}
        hidden = {f"{p}.{part}" for p in prefixes for part in _PARTS}
        for p in prefixes:
            for part in ("qzeros", "scales"):
                if f"{p}.{part}" not in ckpt:
                    raise CheckpointError(f"int4 tensor {p}.qweight has no {part}", ckpt.refs[p + ".qweight"].file)
        self._names = [n for n in ckpt.names() if n not in hidden] + list(self.int4)
        self._name_set = set(self._names)
        self.refs = dict(ckpt.refs)
        for w, p in self.int4.items():
            self.refs[w] = ckpt.refs[p + ".qweight"]
        self._cache: dict[str, Unpacked] = {}

    def names(self) -> list[str]:
        return list(self._names)

    def __iter__(self):
        return iter(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._name_set

    def unpacked(self, name: str) -> Unpacked:
        p = self.int4[name]
        c, cfg = self._c, self.cfg
        if cfg.method == "awq":
            return unpack_awq(c.raw(p + ".qweight"), c.raw(p + ".qzeros"), c.raw(p + ".scales"), cfg)
        g_idx = c.raw(p + ".g_idx") if p + ".g_idx" in c else None
        return unpack_gptq(c.raw(p + ".qweight"), c.raw(p + ".qzeros"), c.raw(p + ".scales"), g_idx, cfg)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.int4:
            p = self.int4[name]
            n_out = self._c.shape(p + ".scales")[1]
            qw = self._c.shape(p + ".qweight")
            n_in = qw[0] if self.cfg.method == "awq" else qw[0] * (32 // self.cfg.bits)
            return (n_out, n_in)
        return self._c.shape(name)

    def load(self, name: str, dtype=np.float32) -> np.ndarray:
        if name in self.int4:
            return self.unpacked(name).dequantize().astype(dtype, copy=False)
        return self._c.load(name, dtype)

    def raw(self, name: str) -> np.ndarray:
        return self.load(name) if name in self.int4 else self._c.raw(name)

    def total_bytes(self) -> int:
        return self._c.total_bytes()

    def close(self) -> None:
        self._c.close()


def plan_repack(tensors: list, ckpt: Int4Checkpoint, report: Int4Report) -> list:
    """Swap planned tensors that are an untransformed int4 source for their lossless Q4_0/Q4_1 encoding."""
    from minicpmv_edge.convert.writer import PlannedTensor

    out, done = [], set()
    for t in tensors:
        src = getattr(t, "source", None)
        if src in ckpt.int4:
            u = ckpt.unpacked(src)
            if u.block_group_size() is not None and tuple(t.shape) == (u.q.shape[1], u.q.shape[0]):
                qtype = Q.Q4_0 if np.all(u.zeros == 8) else Q.Q4_1
                out.append(PlannedTensor(t.name, t.shape, qtype, _repacker(ckpt, src), source=src, encoded=True))
                report.repacked[t.name] = qtype.name
                done.add(src)
                continue
        out.append(t)
    # the rest (act-order, odd group sizes, transformed or vision tensors) went through ckpt.load: floats
    report.dequantized = sorted(set(ckpt.int4) - done)
    return out


def _repacker(ckpt: Int4Checkpoint, src: str) -> Callable[[], np.ndarray]:
    return lambda: repack(ckpt.unpacked(src))[1]
