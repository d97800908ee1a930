"""Family registry: config.json -> the module that knows that MiniCPM-V version.

Adding a version = one module here plus its fixture recipe and tests.
"""

from __future__ import annotations

from pathlib import Path

from minicpmv_edge.errors import CheckpointError, UnsupportedModelError

from ..json_files import load_json
from .base import ConversionPlan, Family, RuntimeFacts
from .minicpmv_2_6 import MiniCPMV26
from .minicpmv_4_0 import MiniCPMV40
from .minicpmv_4_5 import MiniCPMV45

FAMILIES: tuple[type[Family], ...] = (MiniCPMV26, MiniCPMV40, MiniCPMV45)
from .minicpmv_4_6 import MiniCPMV46; FAMILIES += (MiniCPMV46,)  # noqa: E402,E702
from .minicpmv_4_7 import MiniCPMV47; FAMILIES += (MiniCPMV47,)  # noqa: E402,E702
from .minicpm_ocr_1_0 import MiniCPMOcr10; FAMILIES += (MiniCPMOcr10,)  # noqa: E402,E702


def supported() -> str:
    return ", ".join(f"{f.name} ({f.example})" for f in FAMILIES)


def read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.exists():
        raise CheckpointError("no config.json (is this a Hugging Face checkpoint directory?)", src)
    return load_json(path)


def by_name(name: str) -> type[Family]:
    for f in FAMILIES:
        if f.name == name or f.model_version == name:
            return f
    raise UnsupportedModelError(f"unknown family {name!r}; supported: {supported()}")


def detect(config: dict, src: Path) -> type[Family]:
    for f in FAMILIES:
        if f.matches(config, src):
            return f
    what = config.get("architectures") or config.get("model_type") or "no architectures/model_type"
    version = f", version {config['version']}" if "version" in config else ""
    raise UnsupportedModelError(f"unsupported model ({what}{version}); supported: {supported()}", src / "config.json")


__all__ = ["ConversionPlan", "Family", "RuntimeFacts", "FAMILIES", "by_name", "detect", "read_config", "supported"]
