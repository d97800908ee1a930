"""CoreML: one ML Program `.mlpackage` per patch grid (fixed shapes are what the Neural
Engine runs; ecosystem.md section 5), float16 compute, CPU_AND_NE, iOS 17.

The traced module is `FixedGrid(module, indices)`: the very module object the ONNX path
exports and tests, with this grid's index inputs baked in as constants, so a package's
only input is `pixel_values` [1, 3, H, W] float32 and its output `embeddings`
[tokens, text_hidden] float32. Conversion works on Linux; prediction does not
(coremltools' `MLModel.predict` needs macOS), see docs/vision-export.md.

TorchScript tracing with coremltools 9.0 needs numpy < 2.4 (python-deps.md section 2).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from minicpmv_edge.errors import InputError, OutputError

from .modules import FixedGrid
from minicpmv_edge.vision_inputs import position_inputs

log = logging.getLogger(__name__)
OUTPUT = "embeddings"
DEPLOYMENT_TARGET = "iOS17"
COMPUTE_UNITS = "CPU_AND_NE"


def _coremltools():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("coremltools").setLevel(logging.ERROR)
            import coremltools as ct
    except ImportError:
        raise InputError("coremltools is not installed; pip install 'minicpmv-edge[vision-export]'") from None
    if tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4):
        raise InputError(f"numpy {np.__version__} breaks coremltools' TorchScript conversion; "
                         "install 'numpy<2.4' (the vision-export extra pins it)")
    return ct


def export_coreml(module: torch.nn.Module, path: Path, graph: str, gh: int, gw: int, patch: int,
                  use_vit_merger: bool) -> tuple[Path, torch.nn.Module]:
    """Returns the package path and the traced wrapper (its `.inner` is `module`)."""
    ct = _coremltools()
    idx = position_inputs(graph, gh, gw, use_vit_merger)
    fixed = FixedGrid(module, {k: torch.from_numpy(v) for k, v in idx.items()}).eval()
    px = torch.zeros(1, 3, gh * patch, gw * patch)
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # coremltools' per-pass progress bars
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(fixed, (px,))
            mlmodel = ct.convert(
                traced,
                inputs=[ct.TensorType(name="pixel_values", shape=tuple(px.shape), dtype=np.float32)],
                outputs=[ct.TensorType(name=OUTPUT, dtype=np.float32)],
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16,
                compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS),
                minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
            )
    finally:
        if quiet is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = quiet
    mlmodel.short_description = f"MiniCPM-V vision encoder, {gh}x{gw} patch grid"
    try:
        mlmodel.save(str(path))
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror})", path) from None
    return path, fixed


def describe_spec(path: Path) -> dict:
    """Inputs/outputs/types of a saved package, read with coremltools (works on Linux)."""
    ct = _coremltools()
    spec = ct.utils.load_spec(str(path))
    ft = ct.proto.FeatureTypes_pb2.ArrayFeatureType

    def io(f):
        a = f.type.multiArrayType
        return {"name": f.name, "dtype": ft.ArrayDataType.Name(a.dataType), "shape": [int(d) for d in a.shape]}

    prog = spec.mlProgram
    return {
        "spec_version": spec.specificationVersion,
        "is_ml_program": spec.WhichOneof("Type") == "mlProgram",
        "inputs": [io(f) for f in spec.description.input],
        "outputs": [io(f) for f in spec.description.output],
        "ops": sorted({op.type for f in prog.functions.values() for b in f.block_specializations.values()
                       for op in b.operations}),
        "fp16_weights": _any_fp16(prog),
    }


def _any_fp16(prog) -> bool:
    # value types are enums in the MIL proto: FLOAT16 = 10
    for f in prog.functions.values():
        for b in f.block_specializations.values():
            for op in b.operations:
                for o in op.outputs:
                    if o.type.tensorType.dataType == 10:
                        return True
    return False
