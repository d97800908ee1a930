"""MiniCPM-V 4.6 vision side (`model.vision_tower.*`, `model.merger.*`) -> llama.cpp mmproj
with projector type `minicpmv4_6` (../shared/reference/llama-cpp-minicpmv.md, "MINICPMV4_6").

The SigLIP tower maps onto the usual `v.*` names (fc1 -> ffn_up, fc2 -> ffn_down,
post_layernorm -> v.post_ln). The window-attention ViT merger inserted after
layer `insert_layer_id` becomes `v.vit_merger.*`; it only runs in "16x" mode, so
in "4x" mode its weights are consumed but not written (llama.cpp's converter
drops them too). The final DownsampleMLP becomes `mm.input_norm` / `mm.up` /
`mm.down`. The mode is fixed at conversion time (`clip.vision.projector.scale_factor`
4 for 16x, 2 for 4x); the merger insertion point rides on
`clip.vision.wa_layer_indexes` (INT32 array).

PyPI gguf knows none of these names or the projector type, so they are literals here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import GGUFWriter

from minicpmv_edge import schema
from minicpmv_edge.errors import CheckpointError, UnsupportedModelError

from .dtypes import mmproj_tensor_type
from .resampler_mmproj import add_siglip_keys
from .safetensors_reader import Checkpoint
from .writer import PlannedTensor

SIGLIP_POS_SIDE = 70  # clip.cpp buckets positions on a hard-coded 70x70 grid (4707-4715)
SIGLIP_POS_ROWS = SIGLIP_POS_SIDE ** 2
DOWNSAMPLE_MODES = {"16x": 4, "4x": 2}  # -> clip.vision.projector.scale_factor (n_merge)

VT = "model.vision_tower."
MERGER = "model.merger."


@dataclass(frozen=True)
class MergerVisionHParams:
    n_embd: int
    n_ff: int
    n_head: int
    n_layer: int
    patch_size: int
    eps: float
    image_size: int  # slice size: preprocessor scale_resolution (448), not vision_config.image_size (980)
    text_n_embd: int
    insert_layer_id: int
    downsample_mode: str
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]

    @property
    def scale_factor(self) -> int:
        return DOWNSAMPLE_MODES[self.downsample_mode]

    @property
    def use_vit_merger(self) -> bool:
        return self.downsample_mode == "16x"

    @classmethod
    def from_config(cls, cfg: dict, preproc: dict, ckpt: Checkpoint) -> "MergerVisionHParams":
        src = ckpt.dir / "config.json"
        vc = cfg.get("vision_config") or {}
        tc = cfg.get("text_config") or {}
        mode = str(preproc.get("downsample_mode", cfg.get("downsample_mode", "16x")))
        if mode not in DOWNSAMPLE_MODES:
            raise UnsupportedModelError(f"downsample_mode {mode!r} is not one of {sorted(DOWNSAMPLE_MODES)}",
                                        ckpt.dir / "preprocessor_config.json")
        if int(cfg.get("merger_times", 1)) != 1:
            raise UnsupportedModelError(
                f"merger_times={cfg['merger_times']}: llama.cpp's minicpmv4_6 projector has one merger MLP", src)
        for key in ("merge_kernel_size",):
            if list(cfg.get(key, [2, 2])) != [2, 2]:
                raise UnsupportedModelError(f"{key}={cfg[key]}: llama.cpp merges 2x2 only", src)
        if list(vc.get("window_kernel_size", [2, 2])) != [2, 2]:
            raise UnsupportedModelError(
                f"vision_config.window_kernel_size={vc['window_kernel_size']}: llama.cpp merges 2x2 only", src)
        layers = {int(m.group(1)) for n in ckpt.names()
                  if (m := re.match(re.escape(VT) + r"encoder\.layers\.(\d+)\.", n))}
        try:
            mean = tuple(float(x) for x in preproc.get("image_mean", [0.5, 0.5, 0.5]))
            std = tuple(float(x) for x in preproc.get("image_std", [0.5, 0.5, 0.5]))
            hp = cls(
                n_embd=int(vc["hidden_size"]), n_ff=int(vc["intermediate_size"]),
                n_head=int(vc["num_attention_heads"]), n_layer=int(vc["num_hidden_layers"]),
                patch_size=int(vc.get("patch_size", 14)), eps=float(vc.get("layer_norm_eps", 1e-6)),
                image_size=int(preproc.get("scale_resolution", cfg.get("image_size", 448))),
                text_n_embd=int(tc["hidden_size"]),
                insert_layer_id=int(cfg.get("insert_layer_id", vc.get("insert_layer_id", 6))),
                downsample_mode=mode, image_mean=mean, image_std=std,
            )
        except KeyError as exc:
            raise CheckpointError(f"config.json lacks vision/text key {exc.args[0]!r}", src) from None
        side = int(vc.get("image_size", 980)) // hp.patch_size
        if side != SIGLIP_POS_SIDE:
            raise UnsupportedModelError(
                f"vision_config image_size {vc.get('image_size')} / patch_size {hp.patch_size} gives a {side}x{side} "
                f"position table; llama.cpp's minicpmv4_6 graph buckets positions on {SIGLIP_POS_SIDE}x"
                f"{SIGLIP_POS_SIDE} (clip.cpp:4752-4759)", src)
        if layers != set(range(hp.n_layer)):
            raise CheckpointError(
                f"checkpoint has vision layers {sorted(layers)[:3]}..{max(layers, default=-1)} "
                f"but vision_config.num_hidden_layers={hp.n_layer}", ckpt.dir)
        if not 0 <= hp.insert_layer_id < hp.n_layer:
            # clip.cpp throws "layer index out of range" for this
            raise CheckpointError(f"insert_layer_id={hp.insert_layer_id} is outside the {hp.n_layer} vision layers", src)
        if len(hp.image_mean) < 3 or len(hp.image_std) < 3:
            raise CheckpointError("image_mean/image_std need 3 values", ckpt.dir / "preprocessor_config.json")
        return hp


_ATTN = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "out_proj": "attn_out"}
_RENAMES = [
    (r"embeddings\.patch_embedding\.(weight|bias)", r"v.patch_embd.\1"),
    (r"embeddings\.position_embedding\.weight", "v.position_embd.weight"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)",
     lambda m: f"v.blk.{m[1]}.{_ATTN[m[2] + '_proj']}.{m[3]}"),
    (r"encoder\.layers\.(\d+)\.layer_norm(1|2)\.(weight|bias)", r"v.blk.\1.ln\2.\3"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"v.blk.\1.ffn_up.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"v.blk.\1.ffn_down.\2"),
    (r"post_layernorm\.(weight|bias)", schema.TN_VISION_POST_LN + r".\1"),
    (r"vit_merger\.layer_norm1\.(weight|bias)", r"v.vit_merger.ln1.\1"),
    (r"vit_merger\.self_attn\.(q|k|v|out)_proj\.(weight|bias)",
     lambda m: f"v.vit_merger.{_ATTN[m[1] + '_proj']}.{m[2]}"),
    (r"vit_merger\.pre_norm\.(weight|bias)", r"v.vit_merger.ds_ln.\1"),
    (r"vit_merger\.linear_1\.(weight|bias)", r"v.vit_merger.ds_ffn_up.\1"),
    (r"vit_merger\.linear_2\.(weight|bias)", r"v.vit_merger.ds_ffn_down.\1"),
]
_MERGER_RENAMES = [
    (r"mlp\.0\.pre_norm\.(weight|bias)", r"mm.input_norm.\1"),
    (r"mlp\.0\.linear_1\.(weight|bias)", r"mm.up.\1"),
    (r"mlp\.0\.linear_2\.(weight|bias)", r"mm.down.\1"),
]


def _rename(local: str, table) -> str | None:
    for pat, repl in table:
        if (m := re.fullmatch(pat, local)):
            return repl(m) if callable(repl) else m.expand(repl)
    return None


def is_vision_tensor(name: str) -> bool:
    return name.startswith((VT, MERGER))


def expected_shapes(hp: MergerVisionHParams) -> dict[str, tuple[int, ...]]:
    V, F, E, p = hp.n_embd, hp.n_ff, hp.text_n_embd, hp.patch_size
    W = 4 * V  # 2x2 window concat
    return {
        "v.patch_embd.weight": (V, 3, p, p), "v.patch_embd.bias": (V,),
        "v.position_embd.weight": (SIGLIP_POS_ROWS, V),
        "v.blk.{i}.attn_q.weight": (V, V), "v.blk.{i}.attn_k.weight": (V, V),
        "v.blk.{i}.attn_v.weight": (V, V), "v.blk.{i}.attn_out.weight": (V, V),
        "v.blk.{i}.attn_q.bias": (V,), "v.blk.{i}.attn_k.bias": (V,),
        "v.blk.{i}.attn_v.bias": (V,), "v.blk.{i}.attn_out.bias": (V,),
        "v.blk.{i}.ln1.weight": (V,), "v.blk.{i}.ln1.bias": (V,),
        "v.blk.{i}.ln2.weight": (V,), "v.blk.{i}.ln2.bias": (V,),
        "v.blk.{i}.ffn_up.weight": (F, V), "v.blk.{i}.ffn_up.bias": (F,),
        "v.blk.{i}.ffn_down.weight": (V, F), "v.blk.{i}.ffn_down.bias": (V,),
        "v.post_ln.weight": (V,), "v.post_ln.bias": (V,),
        "v.vit_merger.ln1.weight": (V,), "v.vit_merger.ln1.bias": (V,),
        "v.vit_merger.attn_q.weight": (V, V), "v.vit_merger.attn_k.weight": (V, V),
        "v.vit_merger.attn_v.weight": (V, V), "v.vit_merger.attn_out.weight": (V, V),
        "v.vit_merger.attn_q.bias": (V,), "v.vit_merger.attn_k.bias": (V,),
        "v.vit_merger.attn_v.bias": (V,), "v.vit_merger.attn_out.bias": (V,),
        "v.vit_merger.ds_ln.weight": (W,), "v.vit_merger.ds_ln.bias": (W,),
        "v.vit_merger.ds_ffn_up.weight": (4 * F, W), "v.vit_merger.ds_ffn_up.bias": (4 * F,),
        "v.vit_merger.ds_ffn_down.weight": (V, 4 * F), "v.vit_merger.ds_ffn_down.bias": (V,),
        "mm.input_norm.weight": (W,), "mm.input_norm.bias": (W,),
        "mm.up.weight": (W, W), "mm.up.bias": (W,),
        "mm.down.weight": (E, W), "mm.down.bias": (E,),
    }


# what clip.cpp requires (tensors it loads without the optional flag)
_REQUIRED = ["v.patch_embd.weight", "v.position_embd.weight", "v.post_ln.weight",
             "mm.input_norm.weight", "mm.up.weight", "mm.down.weight"]
_REQUIRED_BLOCK = ["attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_out.weight",
                   "ffn_up.weight", "ffn_down.weight", "ln1.weight", "ln2.weight"]
_REQUIRED_16X = ["v.vit_merger.ln1.weight", "v.vit_merger.ln1.bias", "v.vit_merger.attn_q.weight",
                 "v.vit_merger.attn_k.weight", "v.vit_merger.attn_v.weight", "v.vit_merger.attn_out.weight",
                 "v.vit_merger.ds_ln.weight", "v.vit_merger.ds_ln.bias", "v.vit_merger.ds_ffn_up.weight",
                 "v.vit_merger.ds_ffn_down.weight"]


def plan_merger_mmproj(ckpt: Checkpoint, hp: MergerVisionHParams, outtype) -> tuple[list[PlannedTensor], set[str]]:
    plan: list[PlannedTensor] = []
    used: set[str] = set()
    want_all = expected_shapes(hp)
    for src in ckpt.names():
        if not is_vision_tensor(src):
            continue
        used.add(src)
        if src.startswith(VT):
            local = src[len(VT):]
            if local == "embeddings.position_ids":
                continue  # a buffer some exports keep; clip.cpp computes positions itself
            name = _rename(local, _RENAMES)
        else:
            name = _rename(src[len(MERGER):], _MERGER_RENAMES)
        if name is None:
            raise UnsupportedModelError(f"no llama.cpp name for vision tensor {src!r}", ckpt.refs[src].file)
        if name.startswith("v.vit_merger.") and not hp.use_vit_merger:
            continue  # 4x mode never runs the ViT merger (clip.cpp:2452-2455)
        shape = tuple(ckpt.shape(src))
        pat = re.sub(r"^v\.blk\.\d+\.", "v.blk.{i}.", name)
        want = want_all.get(pat)
        if name == "v.position_embd.weight" and shape[0] != SIGLIP_POS_ROWS:
            raise UnsupportedModelError(
                f"tensor {src!r} has {shape[0]} rows; llama.cpp buckets positions on a fixed 70x70 grid "
                f"and needs {SIGLIP_POS_ROWS}", ckpt.refs[src].file)
        if want is not None and shape != want:
            raise CheckpointError(f"tensor {src!r} has shape {list(shape)} but config.json implies {list(want)}",
                                  ckpt.refs[src].file)
        plan.append(PlannedTensor(name, shape, mmproj_tensor_type(name, shape, outtype),
                                  lambda s=src: ckpt.load(s), source=src))
    names = {t.name for t in plan}
    required = list(_REQUIRED) + [f"v.blk.{i}.{k}" for i in range(hp.n_layer) for k in _REQUIRED_BLOCK]
    if hp.use_vit_merger:
        required += _REQUIRED_16X
    missing = [r for r in required if r not in names]
    if missing:
        raise CheckpointError(f"vision tensors for {missing[:4]} are missing", ckpt.dir)
    return plan, used


def add_merger_mmproj_metadata(w: GGUFWriter, hp: MergerVisionHParams) -> None:
    """Keys and exact types clip.cpp reads for PROJECTOR_TYPE_MINICPMV4_6 (clip.cpp:1221-1478)."""
    add_siglip_keys(w, schema.PROJECTOR_MINICPMV4_6, hp, hp.image_mean, hp.image_std)
    w.add_uint32(schema.CLIP_SCALE_FACTOR_U32, hp.scale_factor)  # UINT32, asserted 2 or 4
    w.add_array(schema.CLIP_WA_LAYER_INDEXES_I32, [int(hp.insert_layer_id)])  # python ints -> INT32 array
    w.add_string(schema.EDGE_DOWNSAMPLE_MODE, hp.downsample_mode)


__all__ = ["MergerVisionHParams", "plan_merger_mmproj", "add_merger_mmproj_metadata", "is_vision_tensor",
           "SIGLIP_POS_ROWS", "DOWNSAMPLE_MODES"]
