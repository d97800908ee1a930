"""The MiniCPM-V 4.5 checkpoint's own Python (its remote code), as a reference for the video tests.

../shared/reference/real-checkpoints/minicpm-v-4_5/remote-code/ is imported as a package (it uses
relative imports): `resampler.py` (the 3D resampler with temporal_ids), the image processor and
processor (frame preprocessing with temporal_ids, the placeholders chat() keeps per group) and the
tokenizer class. `modeling_minicpmv.py` needs torchvision and is not imported; the forward is
assembled from transformers' Qwen3 + SigLIP classes in tests/reference/resampler_family.py
plus the real resampler, as modeling_minicpmv.get_vllm_embedding does it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

PACKAGE = "minicpmv45_remote"


def shared_dir() -> Path:
    """The shared/ folder beside the checkout (CI: a copy beside the clone; helpers' worktrees sit
    one level deeper), or MINICPMV_EDGE_SHARED."""
    env = os.environ.get("MINICPMV_EDGE_SHARED")
    cands = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[2]
    cands += [p / "shared" for p in (repo.parent, repo.parent.parent)]
    for c in cands:
        if (c / "reference" / "real-checkpoints").is_dir():
            return c
    raise FileNotFoundError(f"no shared/reference/real-checkpoints beside {repo} (set MINICPMV_EDGE_SHARED)")


def remote(module: str):
    root = shared_dir() / "reference" / "real-checkpoints" / "minicpm-v-4_5" / "remote-code"
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py", submodule_search_locations=[str(root)])
        sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"{PACKAGE}.{module}")


def model_card() -> str:
    """The 4.5 model card text (encode_video and its constants)."""
    return (shared_dir() / "seeds" / "000_fd0968816d11fe1e.txt").read_text()


def processor(ckpt: Path):
    """MiniCPMVProcessor as chat() builds it, from the checkpoint's preprocessor_config.json."""
    pp = json.loads((Path(ckpt) / "preprocessor_config.json").read_text())
    kw = {k: v for k, v in pp.items() if k not in ("image_processor_type", "auto_map", "processor_class")}
    ip = remote("image_processing_minicpmv").MiniCPMVImageProcessor(**kw)
    tok = remote("tokenization_minicpmv_fast").MiniCPMVTokenizerFast.from_pretrained(str(ckpt))
    return remote("processing_minicpmv").MiniCPMVProcessor(image_processor=ip, tokenizer=tok)


class VideoReference:
    """4.5's forward for a video prompt: SigLIP (transformers, NaViT buckets) -> the real 3D
    resampler over each temporal_ids group -> scattered into Qwen3's input embeddings."""

    def __init__(self, ckpt: Path):
        from tests.reference.resampler_family import Reference

        self.base = Reference(ckpt)
        cfg = self.base.cfg
        E = cfg["hidden_size"]
        rs = {k: v for k, v in self.base.rs.items()}
        self.resampler = remote("resampler").Resampler(num_queries=cfg["query_num"], embed_dim=E, num_heads=E // 128,
                                                      kv_dim=cfg["vision_config"]["hidden_size"], adaptive=True,
                                                      batch_infer=True).eval()
        self.resampler.load_state_dict(rs, strict=True)
        self.processor = processor(ckpt)

    @torch.no_grad()
    def tower(self, pixels: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """pixels [3, H, W] normalised -> [h*w, V] post-layernorm features."""
        b = self.base
        emb = b.vpm.embeddings.patch_embedding(pixels[None].float()).flatten(2).transpose(1, 2)
        bh = (np.arange(h) * b.pos_side) // h
        bw = (np.arange(w) * b.pos_side) // w
        ids = torch.from_numpy((bh[:, None] * b.pos_side + bw[None, :]).reshape(-1))
        hidden = b.vpm.encoder(inputs_embeds=emb + b.vpm.embeddings.position_embedding(ids)[None]).last_hidden_state
        return b.vpm.post_layernorm(hidden)[0]

    @staticmethod
    def unpatch(p: torch.Tensor, h: int, w: int, patch: int = 14) -> torch.Tensor:
        """The processor's reshape_by_patch [3, patch, h*w*patch] back to [3, h*patch, w*patch]."""
        x = p.reshape(3, patch, h * w, patch).permute(0, 2, 1, 3)  # [3, L, py, px]
        return x.reshape(3, h, w, patch, patch).permute(0, 1, 3, 2, 4).reshape(3, h * patch, w * patch)

    @torch.no_grad()
    def group_embeddings(self, inputs) -> torch.Tensor:
        """[groups, 64, E] for one prompt of the processor's output."""
        feats, sizes = [], inputs["tgt_sizes"][0]
        for p, (h, w) in zip(inputs["pixel_values"][0], sizes.tolist()):
            feats.append(self.tower(self.unpatch(p, h, w), h, w))
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        tids = [[int(t) for t in g] for g in inputs["temporal_ids"][0]]
        return self.resampler(x, sizes.to(torch.int32), tids)

    @torch.no_grad()
    def next_token_logits(self, inputs) -> np.ndarray:
        ids = inputs["input_ids"][0].long()
        emb = self.base.llm.get_input_embeddings()(ids[None])[0].clone()
        vis = self.group_embeddings(inputs)
        for g, (a, b) in enumerate(inputs["image_bound"][0].tolist()):
            emb[a:b] = vis[g]
        out = self.base.llm(inputs_embeds=emb[None])
        return out.logits[0, -1].float().numpy()


__all__ = ["shared_dir", "remote", "model_card", "processor", "VideoReference"]
