"""manifest.json: what a converted folder holds, read by every later command."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError


def _kind(v) -> str:
    return "null" if v is None else type(v).__name__

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
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError("is not a folder (a converted folder holds manifest.json)"
                             if folder.exists() else "folder does not exist", folder)
        path = folder / MANIFEST
        if not path.exists():
            raise InputError("no manifest.json here; convert a checkpoint into this folder first", folder)
        if not path.is_file() or path.stat().st_size > 1 << 20:
            raise InputError("manifest.json is not a regular file under 1 MB", path)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"corrupt manifest: not UTF-8 JSON ({type(exc).__name__})", path) from None
        except OSError as exc:
            raise InputError(f"cannot read ({exc.strerror})", path) from None
        if not isinstance(data, dict):
            raise InputError(f"corrupt manifest: a JSON {type(data).__name__}, expected an object", path)
        return cls._checked(data, path)

    @classmethod
    def _checked(cls, data: dict, path: Path) -> "Manifest":
        """Every field with its type; the file names are plain names inside the folder."""
        # fields a newer minicpmv-edge added are ignored: the folder still loads with this version
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("family", "text", "mmproj", "source", "tool_version", "outtype"):
            if not isinstance(data.get(name), str):
                raise InputError(f"corrupt manifest: {name!r} must be a string, got {_kind(data.get(name))}", path)
        for name in ("files", "quant"):
            if name in data and not isinstance(data[name], dict):
                raise InputError(f"corrupt manifest: {name!r} must be an object, got {_kind(data[name])}", path)
        for name in ("text", "mmproj"):
            value = data[name]
            # a converted folder is self-contained: ../models/x.gguf or /etc/passwd is not one of its files
            if not value or Path(value).name != value or value in (".", ".."):
                raise InputError(f"corrupt manifest: {name} {value!r:.80} is not a file name inside the folder", path)
        return cls(**data)

    def path_of(self, folder: str | os.PathLike[str], key: str) -> Path:
        """The folder's `key` file ("text" or "mmproj"), which must exist there."""
        path = Path(folder) / getattr(self, key)
        if not path.is_file():
            raise InputError(f"manifest.json names {getattr(self, key)!r} as the {key} file but it is not in the "
                             "folder (moved or deleted?)", Path(folder))
        return path
