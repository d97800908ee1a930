"""manifest.json: what a converted folder holds, read by every later command."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError

MANIFEST = "manifest.json"


@dataclass
class Manifest:
    family: str
    text: str  # file names relative to the folder
    mmproj: str
    source: str
    tool_version: str
    outtype: str
    files: dict[str, dict] = field(default_factory=dict)  # every produced file: {name: {kind, type, bytes}}
    # how weights were quantized: {"int4": {method, repacked, dequantized, ...}, "text_quant": {type, tool}}
    quant: dict = field(default_factory=dict)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST
        tmp = path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> "Manifest":
        path = Path(folder) / MANIFEST
        if not path.exists():
            raise InputError("no manifest.json here; convert a checkpoint into this folder first", folder)
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise InputError(f"corrupt manifest ({exc})", path) from None

    def path_of(self, folder: str | os.PathLike[str], key: str) -> Path:
        return Path(folder) / getattr(self, key)
