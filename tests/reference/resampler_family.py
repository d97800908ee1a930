"""Reference forward for MiniCPM-V 2.6 / 4.0 / 4.5 checkpoints (torch, float32).

Text: the transformers class the real model wraps as `self.llm` (Qwen2, Llama,
Qwen3), loaded with the `llm.*` tensors. Vision: transformers' SigLIP encoder
layers with MiniCPM-V's NaViT position bucketing (modeling_navit_siglip.py:
bucket = floor(i * 70 / n_patches_per_side)), then the Perceiver resampler as
published in resampler.py: q = ln_q(query); x = ln_kv(kv_proj(x));
attn(q, key = x + pos2d, value = x); ln_post; x @ proj. pos2d is MAE's 2D
sin-cos table whose first half encodes the column (w) and second the row (h).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

TEXT_CLASSES = {"2.6": "Qwen2", "4.0": "Llama", "4.5": "Qwen3"}


def _state(ckpt: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return {k: v.float() for k, v in sd.items()}


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, h: int, w: int) -> np.ndarray:
    gw, gh = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return np.concatenate([sincos_1d(dim // 2, gw), sincos_1d(dim // 2, gh)], axis=1)


class Reference:
    def __init__(self, ckpt: str | Path):
        import transformers

        ckpt = Path(ckpt)
        self.cfg = cfg = json.loads((ckpt / "config.json").read_text())
        sd = _state(ckpt)
        kind = TEXT_CLASSES[str(cfg["version"])]
        text_cfg = {k: v for k, v in cfg.items() if k not in ("vision_config", "architectures", "auto_map", "model_type")}
        conf = getattr(transformers, f"{kind}Config")(**text_cfg)
        conf._attn_implementation = "eager"
        self.llm = getattr(transformers, f"{kind}ForCausalLM")(conf).eval()
        missing, unexpected = self.llm.load_state_dict(
            {k[4:]: v for k, v in sd.items() if k.startswith("llm.")}, strict=False)
        assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)

        vc = cfg["vision_config"]
        vconf = transformers.SiglipVisionConfig(**{k: v for k, v in vc.items() if k != "model_type"},
                                                vision_use_head=False)
        vconf._attn_implementation = "eager"
        self.vpm = transformers.SiglipVisionModel(vconf).eval()
        self.vpm.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("vpm.")}, strict=True)
        self.rs = {k[len("resampler."):]: v for k, v in sd.items() if k.startswith("resampler.")}
        self.patch = int(vc.get("patch_size", 14))
        self.pos_side = int(vc["image_size"]) // self.patch

    @torch.no_grad()
    def next_token_logits(self, token_ids: list[int]) -> np.ndarray:
        out = self.llm(torch.tensor([token_ids]))
        return out.logits[0, -1].float().numpy()

    @torch.no_grad()
    def image_embeddings(self, rgb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        x = (x - 0.5) / 0.5
        emb = self.vpm.embeddings.patch_embedding(x)  # (1, V, h, w)
        h, w = emb.shape[2:]
        emb = emb.flatten(2).transpose(1, 2)
        bh = (np.arange(h) * self.pos_side) // h
        bw = (np.arange(w) * self.pos_side) // w
        pos_ids = torch.from_numpy((bh[:, None] * self.pos_side + bw[None, :]).reshape(-1))
        emb = emb + self.vpm.embeddings.position_embedding(pos_ids)[None]
        hidden = self.vpm.encoder(inputs_embeds=emb).last_hidden_state
        hidden = self.vpm.post_layernorm(hidden)
        return self.resample(hidden[0], h, w).numpy()

    def resample(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        rs = self.rs
        E = rs["query"].shape[1]
        ln = torch.nn.functional.layer_norm
        x = x @ rs["kv_proj.weight"].T
        x = ln(x, (E,), rs["ln_kv.weight"], rs["ln_kv.bias"], eps=1e-6)
        q = ln(rs["query"], (E,), rs["ln_q.weight"], rs["ln_q.bias"], eps=1e-6)
        pos = torch.from_numpy(sincos_2d(E, h, w)).float()
        attn = torch.nn.MultiheadAttention(E, E // 128)
        attn.load_state_dict({"in_proj_weight": rs["attn.in_proj_weight"], "in_proj_bias": rs["attn.in_proj_bias"],
                              "out_proj.weight": rs["attn.out_proj.weight"], "out_proj.bias": rs["attn.out_proj.bias"]})
        out, _ = attn(q[:, None], (x + pos)[:, None], x[:, None], need_weights=False)
        out = ln(out[:, 0], (E,), rs["ln_post.weight"], rs["ln_post.bias"], eps=1e-6)
        return out @ rs["proj"]
