"""Images and video frames in, RGB bitmaps out, with the checks llama.cpp does not do.

Pillow decodes (with its decompression-bomb guard set to our pixel limit), EXIF
orientation is applied, every mode (CMYK, 16-bit, palette, alpha) becomes RGB;
extreme aspect ratios are refused before mtmd's slicer sees them. Video files are
read by video_source.py (PyAV).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minicpmv_edge import limits
from minicpmv_edge.errors import MediaError

# one set of limits with the C bridge: minicpmv_edge/data/media_limits.h
DEFAULT_MAX_PIXELS = limits.IMAGE_MAX_PIXELS
MAX_ASPECT = float(limits.IMAGE_MAX_ASPECT)  # llama.cpp's slicer needs both sides >= one patch after scaling
MIN_SIDE = limits.IMAGE_MIN_SIDE


@dataclass(frozen=True)
class MediaLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect: float = MAX_ASPECT
    max_file_bytes: int = limits.IMAGE_MAX_FILE_BYTES


@dataclass
class Image:
    rgb: np.ndarray  # HxWx3 uint8
    digest: str  # content hash of the pixels: the embedding-cache key

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def _pil():
    from minicpmv_edge.extras import need

    return need("PIL.Image", "runtime", "reading images")


def _to_rgb(im, source: str):
    _pil()
    from PIL import Image as PILImage, ImageOps

    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block must not lose the picture
        pass
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        im = PILImage.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = PILImage.new("RGBA", im.size, (255, 255, 255, 255))
        im = PILImage.alpha_composite(bg, im)
    return im.convert("RGB")


def load_image(src, limits: MediaLimits = MediaLimits(), name: str | None = None) -> Image:
    """src: path, bytes, PIL image or HxWx3 uint8 array."""
    _pil()
    from PIL import Image as PILImage, UnidentifiedImageError

    label = name or (str(src) if isinstance(src, (str, os.PathLike)) else type(src).__name__)
    if isinstance(src, np.ndarray):
        if src.ndim != 3 or src.shape[2] != 3 or src.dtype != np.uint8:
            raise MediaError("raw image arrays must be HxWx3 uint8 RGB", label)
        return _checked(np.ascontiguousarray(src), limits, label)
    if isinstance(src, PILImage.Image):
        return _checked(np.asarray(_to_rgb(src, label)), limits, label)
    old = PILImage.MAX_IMAGE_PIXELS
    # our own size check follows Image.open (which reads only the header) and comes before load();
    # Pillow's guard would also warn on stderr for images between our limit and twice it
    PILImage.MAX_IMAGE_PIXELS = None
    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            if len(src) > limits.max_file_bytes:
                raise MediaError(f"image data is {len(src)} bytes, over the limit of {limits.max_file_bytes}", label)
            fh = io.BytesIO(bytes(src))
        else:
            path = Path(src)
            _check_file(path, limits.max_file_bytes, "image", label)
            fh = open(path, "rb")
        with fh:
            with PILImage.open(fh) as im:
                w, h = im.size
                if w * h > limits.max_pixels:
                    raise MediaError(f"image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}",
                                     label)
                im.load()
                rgb = np.asarray(_to_rgb(im, label))
    except MediaError:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        # Pillow refuses it from the header, before decoding; its message carries the pixel count
        n = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{n.group(1)} pixels" if n else "larger"
        raise MediaError(f"image is {size}, over the limit of {limits.max_pixels} pixels (decompression bomb?)",
                         label) from None
    except UnidentifiedImageError:
        raise MediaError("not a readable image (not a format Pillow reads: PNG, JPEG, GIF, BMP, WebP, TIFF, ...)", label) \
            from None
    except (OSError, SyntaxError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else _clean(exc)  # no server paths
        raise MediaError(f"not a readable image ({type(exc).__name__}: {why})", label) from None
    finally:
        PILImage.MAX_IMAGE_PIXELS = old
    return _checked(rgb, limits, label)


def _clean(exc: BaseException) -> str:
    """An exception's text without Python reprs such as <_io.BytesIO object at 0x7f...>."""
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>", "the data", str(exc))
    return text[:80]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _check_file(path: Path, max_bytes: int, what: str, label: str | None = None) -> None:
    """A regular file we may read whole: not missing, not a folder, device or FIFO, not huge.
    Errors name `label` (what the caller gave, e.g. a server client's URL) instead of our path."""
    shown = label or path
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MediaError(f"{what} file does not exist", shown) from None
    except OSError as exc:
        raise MediaError(f"cannot open the {what} file ({exc.strerror})", shown) from None
    if stat.S_ISDIR(st.st_mode):
        raise MediaError(f"is a directory, not {_a(what)} file", shown)
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(f"is not a regular file (a device, FIFO or socket), not {_a(what)} file", shown)
    if st.st_size > max_bytes:
        raise MediaError(f"{what} file is {st.st_size} bytes, over the limit of {max_bytes}", shown)


def _checked(rgb: np.ndarray, limits: MediaLimits, label: str) -> Image:
    h, w = rgb.shape[:2]
    # the order of the C bridge's image_dims_ok (mobile_bridge/src/image.cpp): same limits, same words
    if h < MIN_SIDE or w < MIN_SIDE:
        raise MediaError(f"image is {w}x{h}; both sides must be at least {MIN_SIDE} pixels", label)
    if w * h > limits.max_pixels:
        raise MediaError(f"image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}", label)
    if max(w / h, h / w) > limits.max_aspect:
        raise MediaError(f"image is {w}x{h}: aspect ratio over {limits.max_aspect:g}:1 is not supported", label)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    digest = hashlib.blake2b(rgb.tobytes(), digest_size=16, person=str(rgb.shape).encode()[:16]).hexdigest()
    return Image(rgb, digest)
