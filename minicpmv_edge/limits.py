"""The image limits shared with the C bridge, read from the one file both use.

`data/media_limits.h` is compiled into mobile_bridge/src/image.cpp and parsed here, so
Python and C refuse exactly the same images (tests pin both to it).
"""

from __future__ import annotations

import re
from pathlib import Path

HEADER = Path(__file__).with_name("data") / "media_limits.h"
_DEFINE = re.compile(r"^#define\s+(MCV_[A-Z0-9_]+)\s+(\d+)\s*$")


def _read(path: Path = HEADER) -> dict[str, int]:
    values: dict[str, int] = {}
    text = re.sub(r"/\*.*?\*/", "", path.read_text(encoding="ascii"), flags=re.S)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#ifndef", "#endif")) or line == "#define MINICPMV_EDGE_MEDIA_LIMITS_H":
            continue
        m = _DEFINE.match(line)
        if not m:
            raise RuntimeError(f"{path}: unexpected line {line!r} (only `#define MCV_NAME INTEGER`)")
        values[m.group(1)] = int(m.group(2))
    return values


_V = _read()
IMAGE_MAX_PIXELS: int = _V["MCV_IMAGE_MAX_PIXELS"]
IMAGE_MAX_ASPECT: int = _V["MCV_IMAGE_MAX_ASPECT"]
IMAGE_MIN_SIDE: int = _V["MCV_IMAGE_MIN_SIDE"]
IMAGE_MAX_FILE_BYTES: int = _V["MCV_IMAGE_MAX_FILE_BYTES"]
