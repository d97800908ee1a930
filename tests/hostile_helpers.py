"""Shared pieces of the hostile-input battery (tests/test_hostile_*.py).

Every hostile case asserts the same contract: one line naming the file or field, exit code 2
from the CLI (a typed EdgeError from Python), and no output left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
from pathlib import Path

from minicpmv_edge.cli import main


def run_cli(*argv) -> tuple[int, str, str]:
    """The CLI in-process (no subprocess: the battery has many cases); an uncaught exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(rc: int, err: str, *needles: str, code: int = 2) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == code, (rc, err)
    assert len(lines) == 1, err
    line = lines[0]
    assert "Traceback" not in err and " object at 0x" not in line, line
    for n in needles:
        assert n in line, (n, line)
    return line


def linked_copy(src: Path, dst: Path, replace: dict[str, bytes | str | None] | None = None) -> Path:
    """`dst` with a symlink to each file of `src`, except those in `replace` (bytes/str written,
    None removed): a mutated checkpoint without copying its weights."""
    dst.mkdir(parents=True)
    replace = replace or {}
    for f in src.iterdir():
        if f.name not in replace:
            os.symlink(f, dst / f.name)
    for name, data in replace.items():
        if data is None:
            continue
        (dst / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return dst


def safetensors_bytes(header, data: bytes = b"") -> bytes:
    """A safetensors file with the given header (any JSON value, written as is) and data."""
    raw = json.dumps(header).encode() if not isinstance(header, (bytes, bytearray)) else bytes(header)
    return struct.pack("<Q", len(raw)) + raw + data


def leftovers(folder: Path) -> list[str]:
    """Outputs a failed command must not leave: GGUFs, temporaries, manifests."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.rglob("*") if p.suffix in (".gguf", ".json", ".onnx")
                  or ".tmp" in p.name or p.name.startswith(".export-tmp"))
