"""Shared fixtures: each checkpoint is generated and converted once per session.

Tiny checkpoints (every family) and the real-layout ones (4.5, 4.6: real sizes,
gigabytes) live under the session's temporary folder; the real-layout files are
deleted when the session ends, so repeated runs do not pile them up on disk.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class _Store:
    def __init__(self, root: Path):
        self.root = root
        self._ckpt: dict = {}
        self._conv: dict = {}
        self._real: dict = {}
        self.timings: dict[str, float] = {}  # seconds per real-layout step (reported by the tests)
        self.big: list[Path] = []

    def checkpoint(self, family: str, shards: int = 1) -> Path:
        key = (family, shards)
        if key not in self._ckpt:
            from minicpmv_edge.fixtures import make_checkpoint

            self._ckpt[key] = make_checkpoint(family, self.root / f"ckpt-{family}-{shards}", shards=shards, seed=0)
        return self._ckpt[key]

    def converted(self, family: str, outtype: str = "f16"):
        key = (family, outtype)
        if key not in self._conv:
            from minicpmv_edge.convert import convert

            self._conv[key] = convert(self.checkpoint(family), self.root / f"out-{family}-{outtype}", outtype=outtype)
        return self._conv[key]

    def real_layout(self, version: str) -> Path:
        """The real-layout checkpoint of MiniCPM-V `version` ("4.5", "4.6"), built once."""
        key = ("ckpt", version)
        if key not in self._real:
            from minicpmv_edge.fixtures.real_layout import make_real_layout

            t = time.perf_counter()
            self._real[key] = make_real_layout(version, self.root / f"real-{version}")
            self.timings[f"build {version}"] = time.perf_counter() - t
            self.big.append(self._real[key])
        return self._real[key]

    def converted_real(self, version: str):
        key = ("conv", version)
        if key not in self._real:
            from minicpmv_edge.convert import convert

            src = self.real_layout(version)
            out = self.root / f"real-out-{version}"
            self.big.append(out)
            self._real[key] = convert(src, out, outtype="f16")
            self.timings[f"convert {version}"] = self._real[key].seconds
        return self._real[key]

    def llama_pair(self, source: str) -> tuple[Path, Path]:
        """llama.cpp's own converter's (text, mmproj) pair of a 4.6 checkpoint, made once:
        `source` is a tiny family ("minicpmv-4.6", "minicpmv-4.6-4x") or "real-4.6"."""
        key = ("llama", source)
        if key not in self._real:
            from tests.llama_converter import llama_converted_pair

            src = self.real_layout("4.6") if source == "real-4.6" else self.checkpoint(source)
            out = self.root / f"llama-{source}"
            if source.startswith("real"):
                self.big.append(out)
            t = time.perf_counter()
            self._real[key] = llama_converted_pair(src, out)
            self.timings[f"llama.cpp convert {source}"] = time.perf_counter() - t
        return self._real[key]

    def cleanup(self) -> None:
        for p in self.big:
            shutil.rmtree(p, ignore_errors=True)


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    s = _Store(tmp_path_factory.mktemp("models"))
    yield s
    s.cleanup()
