"""Reference outputs for MiniCPM-V 4.6 from transformers' own implementation.

Built on `MiniCPMV4_6ForConditionalGeneration` (transformers >= 5.7, installed
5.23) in float32 on CPU, so it is independent of our converter: the text
logits come from the HF Qwen3.5 forward, the image embeddings from the model's
own `get_image_features` (vision tower, ViT merger in 16x mode, final merger).

Image preprocessing follows what llama.cpp's mtmd does for one 448x448 image
that needs no slicing and no resize: x/255, normalise with the checkpoint's
mean/std, then the HF 4.6 processor's NaViT patch packing (`reshape_by_patch`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def reshape_by_patch(image: torch.Tensor, patch: int) -> torch.Tensor:
    """[C, H, W] -> [C, patch, H*W/patch]: patches in row-major order laid side by side
    (same ops as MiniCPMV4_6ImageProcessor.reshape_by_patch)."""
    c = image.shape[0]
    cols = torch.nn.functional.unfold(image.unsqueeze(0), (patch, patch), stride=(patch, patch))
    return cols.reshape(c, patch, patch, -1).permute(0, 1, 3, 2).reshape(c, patch, -1)


class Reference:
    def __init__(self, ckpt_dir):
        from transformers import MiniCPMV4_6ForConditionalGeneration

        self.dir = Path(ckpt_dir)
        torch.manual_seed(0)
        self.model = MiniCPMV4_6ForConditionalGeneration.from_pretrained(
            str(self.dir), dtype=torch.float32).eval()
        cfg = self.model.config
        pp_path = self.dir / "preprocessor_config.json"
        pp = json.loads(pp_path.read_text()) if pp_path.exists() else {}
        self.downsample_mode = str(pp.get("downsample_mode", cfg.downsample_mode or "16x"))
        self.patch = int(cfg.vision_config.patch_size)
        self.mean = np.asarray(pp.get("image_mean", [0.5, 0.5, 0.5]), dtype=np.float32)
        self.std = np.asarray(pp.get("image_std", [0.5, 0.5, 0.5]), dtype=np.float32)
        self.n_vocab = int(cfg.text_config.vocab_size)
        self.hidden = int(cfg.text_config.hidden_size)

    @torch.no_grad()
    def next_token_logits(self, token_ids: list[int]) -> np.ndarray:
        """Logits for the token after `token_ids` (text only), shape (n_vocab,) float32."""
        ids = torch.tensor([list(token_ids)], dtype=torch.long)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        return out.logits[0, -1].float().numpy().astype(np.float32)

    def pixel_values(self, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError("expected an HxWx3 uint8 image")
        h, w = rgb.shape[:2]
        if h % self.patch or w % self.patch:
            raise ValueError(f"image sides must be multiples of {self.patch}")
        x = (rgb.astype(np.float32) / 255.0 - self.mean) / self.std
        img = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
        pv = reshape_by_patch(img, self.patch).unsqueeze(0)  # (1, 3, 14, L*14)
        sizes = torch.tensor([[h // self.patch, w // self.patch]], dtype=torch.int32)
        return pv, sizes

    @torch.no_grad()
    def image_embeddings(self, rgb: np.ndarray) -> np.ndarray:
        """Embeddings of one unsliced image (448x448 as mtmd sees it): [n_tokens, text_hidden]."""
        pv, sizes = self.pixel_values(rgb)
        out = self.model.model.get_image_features(pv, sizes, downsample_mode=self.downsample_mode)
        feats = out.pooler_output
        feats = feats[0] if isinstance(feats, (list, tuple)) else feats
        return feats.float().numpy().astype(np.float32)
