"""ONNX: one graph per precision that serves every patch grid (H, W and the index inputs
are dynamic axes); the grids listed in metadata.json are the ones the runtime accepts.

Exported with the TorchScript-based exporter (opset 17, `dynamo=False`): a fraction of a
second per graph and the same numbers as the dynamo exporter (python-deps.md, section 3).
fp16: the weights and activations are float16; pixels in and embeddings out stay float32
(casts inside the graph), and the resampler's sin-cos positions are computed in float32.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from minicpmv_edge.errors import OutputError

from minicpmv_edge.vision_inputs import position_inputs

log = logging.getLogger(__name__)
OUTPUT = "embeddings"


class _Fp16(torch.nn.Module):
    """float32 pixels -> float16 model -> float32 embeddings."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.input_names = inner.input_names

    def forward(self, pixel_values: torch.Tensor, *idx: torch.Tensor) -> torch.Tensor:
        return self.inner(pixel_values.to(torch.float16), *idx).to(torch.float32)


def example_inputs(graph: str, names, gh: int, gw: int, patch: int, use_vit_merger: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    px = torch.rand(1, 3, gh * patch, gw * patch, generator=g) * 2 - 1
    idx = position_inputs(graph, gh, gw, use_vit_merger)
    return (px,) + tuple(torch.from_numpy(idx[n]) for n in names[1:])


def dynamic_axes(names) -> dict:
    axes = {"pixel_values": {2: "height", 3: "width"}, OUTPUT: {0: "tokens"}}
    for n in names[1:]:
        axes[n] = {0: "merged_patches" if n == "merger_idx" else "patches"}
    return axes


def export_onnx(module: torch.nn.Module, path: Path, graph: str, patch: int, use_vit_merger: bool,
                fp16: bool = False, grid: tuple[int, int] = (32, 32)) -> Path:
    names = list(module.input_names)
    model = _Fp16(copy.deepcopy(module).half().eval()) if fp16 else module
    args = example_inputs(graph, names, *grid, patch, use_vit_merger)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), input_names=names, output_names=[OUTPUT],
                              dynamic_axes=dynamic_axes(names), opset_version=17, dynamo=False,
                              do_constant_folding=True)
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror})", path) from None
    return path


def run_onnx(path: Path, feeds: dict[str, np.ndarray], threads: int | None = None) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]
