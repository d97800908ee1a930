"""Checkpoint directory -> the export module with its weights, plus the static half of
metadata.json (what the module is and which mmproj / text model it belongs to).

Weights come from our safetensors reader (bf16 upcast exactly to float32); the config
is read by the same family code the converter uses, so an export and a conversion of
one checkpoint agree on every dimension.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from minicpmv_edge import schema
from minicpmv_edge.errors import CheckpointError, UnsupportedModelError

from .. import families
from ..families.minicpmv_4_6 import MiniCPMV46
from ..families.resampler_family import ResamplerFamily, read_preprocessor
from ..merger_mmproj import MergerVisionHParams
from ..resampler_mmproj import VisionHParams
from ..safetensors_reader import Checkpoint
from .modules import MergerEncoder, ResamplerEncoder

SIGLIP_POS_ROWS = 4900
FINGERPRINT_TENSOR = "v.position_embd.weight"  # the mmproj name of the table hashed below


@dataclass
class Built:
    module: torch.nn.Module
    family: str
    graph: str  # "resampler" | "merger"
    meta: dict = field(default_factory=dict)

    def tokens(self, gh: int, gw: int) -> int:
        return self.meta["query_num"] if self.graph == "resampler" else gh * gw // self.meta["token_divisor"]


def state_sha256(module: torch.nn.Module) -> str:
    """Identity of a module's weights: names, shapes and float32 bytes, sorted by name."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        a = t.detach().to(torch.float32).contiguous().numpy()
        h.update(name.encode() + b"\0" + str(list(a.shape)).encode() + b"\0" + a.tobytes())
    return h.hexdigest()


def build(src: str | Path) -> Built:
    src = Path(src)
    if not src.is_dir():
        raise CheckpointError("checkpoint directory does not exist", src)
    config = families.read_config(src)
    fam = families.detect(config, src)
    ckpt = Checkpoint(src)
    try:
        if issubclass(fam, ResamplerFamily):
            built = _build_resampler(fam, ckpt, config)
        elif issubclass(fam, MiniCPMV46):
            built = _build_merger(fam, ckpt, config, read_preprocessor(src))
        else:  # a family added later without an export recipe
            raise UnsupportedModelError(f"{fam.name} has no vision export recipe", src / "config.json")
        pos = built.meta.pop("_pos_tensor")
        if ckpt.shape(pos)[0] != SIGLIP_POS_ROWS:
            raise UnsupportedModelError(f"{pos} has {ckpt.shape(pos)[0]} rows; llama.cpp needs {SIGLIP_POS_ROWS}",
                                        ckpt.refs[pos].file)
        table = np.ascontiguousarray(ckpt.load(pos, np.float32))
        built.meta["mmproj"] = {
            "projector_type": built.meta.pop("_projector"),
            "projection_dim": built.meta["text_hidden"],
            "fingerprint_tensor": FINGERPRINT_TENSOR,
            "fingerprint_sha256": hashlib.sha256(table.tobytes()).hexdigest(),
        }
        built.meta["source"] = src.resolve().name
        return built
    finally:
        ckpt.close()


def _load(module: torch.nn.Module, ckpt: Checkpoint, names: list[str]) -> None:
    want = module.state_dict()
    missing = sorted(set(want) - set(names))
    extra = sorted(set(names) - set(want))
    if missing or extra:
        raise CheckpointError(f"vision tensors do not fit the export module: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}", ckpt.dir)
    sd = {}
    for n in names:
        if tuple(ckpt.shape(n)) != tuple(want[n].shape):
            raise CheckpointError(f"tensor {n!r} has shape {list(ckpt.shape(n))}, config implies "
                                  f"{list(want[n].shape)}", ckpt.refs[n].file)
        sd[n] = torch.from_numpy(np.ascontiguousarray(ckpt.load(n, np.float32)))
    module.load_state_dict(sd, strict=True)
    module.eval()


def _vision(n_embd, n_ff, n_head, n_layer, patch, eps) -> dict:
    return dict(dim=n_embd, ff=n_ff, n_head=n_head, n_layer=n_layer, patch=patch, eps=eps, n_pos=SIGLIP_POS_ROWS)


def _build_resampler(fam, ckpt: Checkpoint, config: dict) -> Built:
    hp = VisionHParams.from_config(config, ckpt)
    vision = _vision(hp.n_embd, hp.n_ff, hp.n_head, hp.n_layer, hp.patch_size, hp.eps)
    module = ResamplerEncoder(vision, hp.text_n_embd, hp.query_num)
    names = [n for n in ckpt.names() if n.startswith(("vpm.", "resampler.")) and not n.startswith("vpm.head.")
             and n not in ("resampler.pos_embed",)]
    _load(module, ckpt, names)
    meta = {
        "family": fam.name, "graph": "resampler", "query_num": hp.query_num, "text_hidden": hp.text_n_embd,
        "patch_size": hp.patch_size, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "vision": {"hidden": hp.n_embd, "layers": hp.n_layer, "heads": hp.n_head, "ff": hp.n_ff},
        "slicing": {"image_size": hp.image_size, "n_merge": 1, "keep_small_whole": False,
                    "max_slice_nums": 9},
        "_projector": schema.PROJECTOR_RESAMPLER, "_pos_tensor": "vpm.embeddings.position_embedding.weight",
    }
    return Built(module, fam.name, "resampler", meta)


def _build_merger(fam, ckpt: Checkpoint, config: dict, preproc: dict) -> Built:
    hp = MergerVisionHParams.from_config(config, preproc, ckpt)
    vision = _vision(hp.n_embd, hp.n_ff, hp.n_head, hp.n_layer, hp.patch_size, hp.eps)
    l1 = "model.vision_tower.vit_merger.linear_1.weight"
    if hp.use_vit_merger and l1 not in ckpt:
        raise CheckpointError(f"16x mode needs {l1}", ckpt.dir)
    inter = int(ckpt.shape(l1)[0]) if hp.use_vit_merger else None
    module = MergerEncoder(vision, hp.text_n_embd, hp.insert_layer_id, inter)
    names = [n for n in ckpt.names() if n.startswith(("model.vision_tower.", "model.merger."))
             and not n.endswith("embeddings.position_ids")
             and (hp.use_vit_merger or ".vit_merger." not in n)]
    _load(module, ckpt, names)
    divisor = 16 if hp.use_vit_merger else 4
    meta = {
        "family": fam.name, "graph": "merger", "downsample_mode": hp.downsample_mode,
        "use_vit_merger": hp.use_vit_merger, "token_divisor": divisor, "query_num": None,
        "text_hidden": hp.text_n_embd, "patch_size": hp.patch_size,
        "image_mean": list(hp.image_mean[:3]), "image_std": list(hp.image_std[:3]),
        "vision": {"hidden": hp.n_embd, "layers": hp.n_layer, "heads": hp.n_head, "ff": hp.n_ff,
                   "insert_layer_id": hp.insert_layer_id},
        "slicing": {"image_size": hp.image_size, "n_merge": hp.scale_factor,
                    "keep_small_whole": hp.scale_factor == 2, "max_slice_nums": 9},
        "_projector": schema.PROJECTOR_MINICPMV4_6,
        "_pos_tensor": "model.vision_tower.embeddings.position_embedding.weight",
    }
    return Built(module, fam.name, "merger", meta)
