"""Reading a checkpoint's JSON files: one error form for every file (the file named, one line)."""

from __future__ import annotations

import json
from pathlib import Path

from minicpmv_edge.errors import CheckpointError


def load_json(path: Path) -> dict:
    """The JSON object in `path`; CheckpointError naming the file when it cannot be read or is not an object."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot parse ({exc})", path) from None
    if not isinstance(obj, dict):
        raise CheckpointError("expected a JSON object", path)
    return obj
