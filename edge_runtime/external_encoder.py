"""An external vision encoder (ONNX Runtime) that replaces mtmd's encoder, slice by slice.

mtmd still tokenizes the prompt: it decides the LLaVA-UHD slicing, inserts the
`<image>`/`<slice>` text and the newline between rows, and decodes the embeddings
we hand it (`mtmd_helper_decode_image_chunk`). What mtmd does not expose is each
slice's preprocessed pixels (mtmd.h has no accessor; `mtmd_image_tokens_get_nx`
is the token count for MiniCPM-V), so this module reproduces its preprocessing
from `tools/mtmd/mtmd-image.cpp` at llama.cpp 0c1e570:

- `get_slice_instructions` (508-611): no slicing unless a side exceeds 448; then the
  overview is `get_best_resize` without upscale and the grid comes from `get_best_grid`
  (log-aspect rule over ceil(area/448²)±1 slices, at most 9), refined size from
  `get_refine_size`; alignment is patch_size * n_merge (14 for the resampler, 56/28 for 4.6).
- 4.6 in 4x mode (n_merge 2) keeps an image of area <= 448² whole, aspect preserved (895-908).
- resizes are Pillow-compatible bicubic (`resize_pillow` is a port of Pillow's Resample.c,
  so PIL's BICUBIC gives the same bytes); the overview is stretched (PAD_NONE), the refined
  image is letterboxed on black (PAD_CEIL, clip-model.h defaults); slices are crops of it.
- pixels are x/255 then (x - mean)/std in float32 (clip-impl.h:712-739).
- chunk order: overview first, then slices row-major (mtmd.cpp:1426-1481).

The session hands each image chunk's pixels to `encode`; tests prove the path
gives mtmd's embeddings (cosine >= 0.999 per token) and the same greedy answer.
The export's metadata.json is the contract checked here before any use.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minicpmv_edge.vision_inputs import position_inputs
from minicpmv_edge.errors import GGUFError, InputError, MediaError, MismatchError, UnsupportedModelError
from minicpmv_edge.extras import need

METADATA = "metadata.json"
METADATA_SCHEMA = 1
MAX_SLICE_NUMS = 9  # hard-coded in mtmd-image.cpp:571
FINGERPRINT_TENSOR = "v.position_embd.weight"  # always F32 in an mmproj, never quantized


# --- mtmd's LLaVA-UHD geometry -------------------------------------------------------------


@dataclass(frozen=True)
class SlicePlan:
    overview: tuple[int, int]  # (width, height) in pixels
    refined: tuple[int, int]  # (0, 0) when there are no slices
    grid: tuple[int, int]  # (columns, rows); (0, 0) when there are no slices
    slices: tuple[tuple[int, int, int, int], ...]  # (x, y, w, h) crops of the refined image, row-major

    def sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every chunk mtmd emits for this image, in order."""
        return [self.overview] + [(w, h) for _, _, w, h in self.slices]


def _round_half_away(x: float) -> int:
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def _ensure_divide_c(length: int, align: int) -> int:
    # C++: std::round((float)length / align) * align, at least align
    return max(_round_half_away(np.float32(length) / np.float32(align)) * align, align)


def _best_resize(w: int, h: int, scale: int, align: int, allow_upscale: bool) -> tuple[int, int]:
    if w * h > scale * scale or allow_upscale:
        r = np.float32(w) / np.float32(h)
        h = int(np.float32(scale) / np.sqrt(r, dtype=np.float32))
        w = int(np.float32(h) * r)
    return _ensure_divide_c(w, align), _ensure_divide_c(h, align)


def _best_grid(multiple: int, log_ratio: float) -> tuple[int, int]:
    cands = []
    for n in (multiple - 1, multiple, multiple + 1):
        if n == 1 or n > MAX_SLICE_NUMS:
            continue
        cands += [(m, n // m) for m in range(1, n + 1) if n % m == 0]
    best, err_min = (1, 1), math.inf
    for gw, gh in cands:
        err = np.float32(abs(log_ratio - math.log(gw / gh)))  # computed in double, kept as float
        if err < err_min:
            best, err_min = (gw, gh), err
    return best


def slice_plan(width: int, height: int, image_size: int = 448, patch_size: int = 14, n_merge: int = 1,
               keep_small_whole: bool = False) -> SlicePlan:
    """What mtmd does with a `width`x`height` image (mtmd-image.cpp:508-611, 895-908).
    `keep_small_whole`: 4.6 in 4x mode (n_merge 2)."""
    align = patch_size * n_merge
    if keep_small_whole and width * height <= image_size * image_size:
        return SlicePlan(_best_resize(width, height, image_size, align, True), (0, 0), (0, 0), ())
    if width <= image_size and height <= image_size:
        return SlicePlan((image_size, image_size), (0, 0), (0, 0), ())
    overview = _best_resize(width, height, image_size, align, False)
    log_ratio = float(np.log(np.float32(width) / np.float32(height), dtype=np.float32))
    ratio = float(np.float32(width) * np.float32(height) / np.float32(image_size * image_size))
    multiple = int(min(math.ceil(ratio), MAX_SLICE_NUMS))
    gw, gh = _best_grid(multiple, log_ratio)
    cell = _best_resize(_ensure_divide_c(width, gw) // gw, _ensure_divide_c(height, gh) // gh,
                        image_size, align, True)
    refined = (cell[0] * gw, cell[1] * gh)
    slices = tuple((x * cell[0], y * cell[1], cell[0], cell[1]) for y in range(gh) for x in range(gw))
    return SlicePlan(overview, refined, (gw, gh), slices)


def _resize(img, size: tuple[int, int], pad: bool):
    from PIL import Image as PILImage

    if img.size == size:
        return img
    if not pad:
        return img.resize(size, PILImage.BICUBIC)
    # PAD_CEIL: aspect-preserving resize, centred on black (mtmd-image.cpp img_tool::resize)
    sw, sh = size[0] / img.size[0], size[1] / img.size[1]
    s = np.float32(min(np.float32(sw), np.float32(sh)))
    nw = min(int(math.ceil(np.float32(img.size[0]) * s)), size[0])
    nh = min(int(math.ceil(np.float32(img.size[1]) * s)), size[1])
    canvas = PILImage.new("RGB", size, (0, 0, 0))
    canvas.paste(img.resize((nw, nh), PILImage.BICUBIC), ((size[0] - nw) // 2, (size[1] - nh) // 2))
    return canvas


def preprocess(rgb: np.ndarray, mean, std, image_size: int = 448, patch_size: int = 14, n_merge: int = 1,
               keep_small_whole: bool = False) -> list[np.ndarray]:
    """mtmd's chunks for one RGB image: normalised float32 [1, 3, H, W] arrays, overview first."""
    from PIL import Image as PILImage

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    plan = slice_plan(w, h, image_size, patch_size, n_merge, keep_small_whole)
    img = PILImage.fromarray(rgb)
    crops = [_resize(img, plan.overview, pad=False)]
    if plan.slices:
        refined = _resize(img, plan.refined, pad=True)
        crops += [refined.crop((x, y, x + cw, y + ch)) for x, y, cw, ch in plan.slices]
    m = np.asarray(mean, np.float32)[:3]
    s = np.asarray(std, np.float32)[:3]
    out = []
    for c in crops:
        x = (np.asarray(c, np.float32) / np.float32(255.0) - m) / s
        out.append(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
    return out


def mmproj_fingerprint(mmproj_path: str | Path) -> str:
    """sha256 of the mmproj's F32 SigLIP position table (bit-identical to the checkpoint's)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(mmproj_path))
    except Exception as exc:  # noqa: BLE001 - gguf raises bare ValueError/struct errors
        raise GGUFError(f"cannot read ({exc})", mmproj_path) from None
    for t in reader.tensors:
        if t.name == FINGERPRINT_TENSOR:
            data = np.asarray(t.data)
            if data.dtype != np.float32:
                raise GGUFError(f"{FINGERPRINT_TENSOR} is {data.dtype}, expected float32", mmproj_path)
            return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    raise GGUFError(f"no {FINGERPRINT_TENSOR} tensor; not a MiniCPM-V mmproj", mmproj_path)


def load_metadata(export_dir: str | Path) -> dict:
    path = Path(export_dir) / METADATA
    if not path.exists():
        raise InputError("no metadata.json; not a `minicpmv-edge export-vision` folder", export_dir)
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"corrupt metadata ({exc})", path) from None
    if not isinstance(meta, dict) or meta.get("schema") != METADATA_SCHEMA:
        raise UnsupportedModelError(f"metadata schema {meta.get('schema') if isinstance(meta, dict) else '?'} "
                                    f"is not {METADATA_SCHEMA}", path)
    return meta


def check_contract(meta: dict, mmproj: str | Path | None = None, text_n_embd: int | None = None,
                   family: str | None = None, where: str | Path | None = None) -> None:
    """Raise MismatchError unless the export belongs to this mmproj / text model."""
    if family is not None and meta.get("family") != family:
        raise MismatchError(f"vision export is for {meta.get('family')}, the model is {family}", where)
    if text_n_embd is not None and int(meta["text_hidden"]) != int(text_n_embd):
        raise MismatchError(f"vision export outputs width {meta['text_hidden']}, the text model's is {text_n_embd}",
                            where)
    if mmproj is not None:
        want = meta["mmproj"]["fingerprint_sha256"]
        if mmproj_fingerprint(mmproj) != want:
            raise MismatchError(f"vision export was made from another checkpoint than this mmproj "
                                f"({FINGERPRINT_TENSOR} differs)", where)


class OnnxVisionEncoder:
    """An exported encoder run by ONNX Runtime; pass as `LoadOptions(vision_encoder=...)`.

    providers: ONNX Runtime execution providers, e.g. ["CoreMLExecutionProvider",
    "CPUExecutionProvider"] on Apple, ["NnapiExecutionProvider", ...] or ["QNNExecutionProvider", ...]
    on Android; default CPU."""

    def __init__(self, export_dir: str | Path, precision: str = "fp32", providers: list | None = None,
                 n_threads: int | None = None):
        self.dir = Path(export_dir)
        self.meta = meta = load_metadata(self.dir)
        if meta.get("format") != "onnx":
            raise UnsupportedModelError(f"this is a {meta.get('format')} export; OnnxVisionEncoder needs onnx",
                                        self.dir / METADATA)
        files = dict(meta.get("files", {}))
        if precision == "int8" and "int8" not in files and "fp32" in files:
            from .onnx_int8 import ensure_int8  # made once from the fp32 graph

            files["int8"] = ensure_int8(self.dir).name
        if precision not in files:
            raise InputError(f"no {precision} model in this export (has {sorted(files)})", self.dir / METADATA)
        self.precision = precision
        self.files = files
        ort = need("onnxruntime", "onnx", "the ONNX vision encoder")
        so = ort.SessionOptions()
        if n_threads:
            so.intra_op_num_threads = int(n_threads)
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.dir / files[precision]), so,
                                            providers=providers or ["CPUExecutionProvider"])
        self.grids = {tuple(g) for g in meta["grids"]}
        self.kind = meta["graph"]
        self.use_vit_merger = bool(meta.get("use_vit_merger", True))
        self._n_merge = int(meta["slicing"]["n_merge"])
        names = [i.name for i in self.session.get_inputs()]
        if names != [i["name"] for i in meta["inputs"]]:
            raise MismatchError(f"graph inputs {names} differ from metadata.json", self.dir / files[precision])

    @property
    def identity(self) -> str:
        """What its embeddings depend on besides the projector: the graph file (persistent cache namespace)."""
        from .embedding_store import file_fingerprint
        from .encoder_choice import cache_root

        return f"onnx:{self.precision}:{file_fingerprint(self.dir / self.files[self.precision], cache_root())}"

    def check(self, mmproj: str | Path | None = None, text_n_embd: int | None = None,
              family: str | None = None) -> None:
        check_contract(self.meta, mmproj, text_n_embd, family, self.dir / METADATA)

    def _plan(self, rgb: np.ndarray) -> SlicePlan:
        sl = self.meta["slicing"]
        h, w = np.asarray(rgb).shape[:2]
        return slice_plan(w, h, sl["image_size"], self.meta["patch_size"], self._n_merge,
                          bool(sl.get("keep_small_whole", False)))

    def n_chunks(self, rgb: np.ndarray) -> int:
        """How many image chunks mtmd makes of this image (overview + slices)."""
        return 1 + len(self._plan(rgb).slices)

    def slices(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Normalised pixels of every chunk mtmd makes of this (already size-capped) image."""
        sl = self.meta["slicing"]
        return preprocess(rgb, self.meta["image_mean"], self.meta["image_std"], sl["image_size"],
                          self.meta["patch_size"], self._n_merge, bool(sl.get("keep_small_whole", False)))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """[1, 3, H, W] normalised float32 -> [tokens, text_hidden] float32."""
        if pixels.ndim != 4 or pixels.shape[:2] != (1, 3):
            raise MediaError(f"expected pixels [1, 3, H, W], got {list(pixels.shape)}")
        p = int(self.meta["patch_size"])
        gh, gw = pixels.shape[2] // p, pixels.shape[3] // p
        if (gh, gw) not in self.grids or pixels.shape[2] % p or pixels.shape[3] % p:
            raise MediaError(f"slice of {pixels.shape[3]}x{pixels.shape[2]} px (patch grid {gh}x{gw}) is not in "
                             f"this export's grids; re-export with --grids {gh}x{gw}", self.dir / METADATA)
        feeds = {"pixel_values": np.ascontiguousarray(pixels, np.float32)}
        feeds.update(position_inputs(self.kind, gh, gw, self.use_vit_merger))
        (out,) = self.session.run(None, feeds)
        return np.asarray(out, np.float32).reshape(-1, int(self.meta["text_hidden"]))


__all__ = ["OnnxVisionEncoder", "SlicePlan", "slice_plan", "preprocess", "position_inputs", "load_metadata",
           "check_contract", "mmproj_fingerprint"]
