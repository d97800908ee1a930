"""MiniCPM-V 4.7 (openbmb/MiniCPM-V-4.7-1B): transformers-native `MiniCPMV4_7ForConditionalGeneration`.

The 4.6 stack (Qwen3.5 text -> llama.cpp `qwen35`, SigLIP + ViT merger + MLP merger -> mmproj
`minicpmv4_6`) plus canvas M-RoPE: every visual token and the markers around it get a (t, h, w)
position on the image canvas (transformers' `MiniCPMV4_7Model.get_rope_index`). The runtime
computes those positions itself (edge_runtime/canvas_positions.py); it anchors them on the marker
ids that config.json carries, so the converter refuses a config without them and checks that they
name the tokenizer's `<image>`, `</image>`, `<slice>`, `</slice>` and newline tokens, then writes
them into the text GGUF (`minicpmv_edge.canvas.*`, read by Python and the C bridge alike).
"""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFWriter

from minicpmv_edge import schema
from minicpmv_edge.errors import CheckpointError, UnsupportedModelError

from ..qwen35_text import Qwen35HParams
from ..qwen35moe_text import MoeHParams
from ..tokenizer import read_vocab
from .minicpmv_4_6 import MiniCPMV46

# config key -> the token text it must name (transformers' MiniCPMV4_7Config docstring)
CANVAS_IDS = {"image_start_id": "<image>", "image_end_id": "</image>", "slice_start_id": "<slice>",
              "slice_end_id": "</slice>", "newline_id": "\n"}
CANVAS_KEYS = {"image_start_id": schema.EDGE_CANVAS_IMAGE_START, "image_end_id": schema.EDGE_CANVAS_IMAGE_END,
               "slice_start_id": schema.EDGE_CANVAS_SLICE_START, "slice_end_id": schema.EDGE_CANVAS_SLICE_END,
               "newline_id": schema.EDGE_CANVAS_NEWLINE}
_BYTE_LEVEL_NEWLINE = "\u010a"  # how a byte-level BPE vocabulary spells "\n" (GPT-2 byte map)


def canvas_ids(config: dict, src: Path) -> dict[str, int]:
    missing = [k for k in CANVAS_IDS if not isinstance(config.get(k), int)]
    if missing:
        raise CheckpointError(f"config.json lacks {', '.join(missing)}: canvas M-RoPE anchors image and slice "
                              "markers by these token ids", src / "config.json")
    return {k: int(config[k]) for k in CANVAS_IDS}


def check_canvas_ids(ids: dict[str, int], tokens: list[str], src: Path) -> None:
    for key, want in CANVAS_IDS.items():
        tid = ids[key]
        have = tokens[tid] if 0 <= tid < len(tokens) else None
        ok = have == want or (want == "\n" and have == _BYTE_LEVEL_NEWLINE)
        if not ok:
            raise CheckpointError(f"config.json {key}={tid} names token {have!r}, not {want!r}", src / "config.json")


class MiniCPMV47(MiniCPMV46):
    name = "minicpmv-4.7"
    model_version = "4.7"
    example = "openbmb/MiniCPM-V-4.7-1B"

    @classmethod
    def matches(cls, config: dict, src: Path) -> bool:
        return ("MiniCPMV4_7ForConditionalGeneration" in (config.get("architectures") or [])
                or config.get("model_type") == "minicpmv4_7")

    def text_hparams(self, text_cfg: dict, src: Path):
        kind = text_cfg.get("model_type", "qwen3_5_text")
        if kind == "qwen3_5_text":
            return super().text_hparams(text_cfg, src)
        if kind != "qwen3_5_moe_text":
            raise UnsupportedModelError(f"text_config.model_type {kind!r} is not a Qwen3.5 text model",
                                        src / "config.json")
        moe = MoeHParams.from_config(text_cfg, src / "config.json")
        # the MoE config has no dense intermediate_size; llama.cpp reads the expert lengths and uses
        # feed_forward_length only as their fallback, so the expert length stands in for it
        dense = dict(text_cfg, intermediate_size=text_cfg.get("intermediate_size", moe.n_ff_exp))
        return Qwen35HParams.from_config(dense, src / "config.json"), moe

    def plan(self, src, ckpt, config: dict, outtype):
        ids = canvas_ids(config, src)
        plan = super().plan(src, ckpt, config, outtype)
        base_meta = plan.add_text_metadata

        def text_meta(w: GGUFWriter) -> None:
            base_meta(w)
            w.add_string(schema.EDGE_IMAGE_POSITIONS, schema.POSITIONS_CANVAS)
            for key, gguf_key in CANVAS_KEYS.items():
                w.add_uint32(gguf_key, ids[key])

        plan.add_text_metadata = text_meta
        rows = next(t.shape[0] for t in plan.text_tensors if t.name == "token_embd.weight")
        check_canvas_ids(ids, read_vocab(src, rows).tokens, src)
        return plan
