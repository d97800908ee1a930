"""Index inputs of the exported vision graphs for one patch grid (gh rows x gw columns).

Part of the contract between the exporter (convert/vision_export, which builds graphs
that take these inputs) and the runtime (edge_runtime/external_encoder.py, which feeds
them); both read this one module. metadata.json describes them in words for other
runtimes (the bridge, apps).
"""

from __future__ import annotations

import numpy as np

SIGLIP_POS_SIDE = 70  # clip.cpp buckets positions on a fixed 70x70 grid (4707-4715)

DESCRIPTIONS = {
    "pos_ids": "int64 [gh*gw]: SigLIP position row per patch, floor(70*r/gh)*70 + floor(70*c/gw), row-major",
    "pos_hw": "float32 [gh*gw, 2]: (row, col) of each patch, row-major (resampler 2D sin-cos)",
    "window_idx": "int64 [gh*gw]: row-major -> 2x2-window-major order: for each window (wr, wc) row-major, "
                  "(2wr,2wc), (2wr,2wc+1), (2wr+1,2wc), (2wr+1,2wc+1)",
    "merger_idx": "int64: window_idx of the grid the final merger sees (gh/2 x gw/2 in 16x mode, gh x gw in 4x)",
}


def window_index(gh: int, gw: int) -> np.ndarray:
    idx = np.arange(gh * gw).reshape(gh // 2, 2, gw // 2, 2).transpose(0, 2, 1, 3)
    return idx.reshape(-1).astype(np.int64)


def position_inputs(graph: str, gh: int, gw: int, use_vit_merger: bool = True) -> dict[str, np.ndarray]:
    bh = (np.arange(gh) * SIGLIP_POS_SIDE) // gh
    bw = (np.arange(gw) * SIGLIP_POS_SIDE) // gw
    out = {"pos_ids": (bh[:, None] * SIGLIP_POS_SIDE + bw[None, :]).reshape(-1).astype(np.int64)}
    if graph == "resampler":
        rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        out["pos_hw"] = np.stack([rows.reshape(-1), cols.reshape(-1)], 1).astype(np.float32)
        return out
    if use_vit_merger:
        out["window_idx"] = window_index(gh, gw)
        gh, gw = gh // 2, gw // 2
    out["merger_idx"] = window_index(gh, gw)
    return out
