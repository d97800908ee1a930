"""Shared fixtures: each tiny checkpoint is generated and converted once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class _Store:
    def __init__(self, root: Path):
        self.root = root
        self._ckpt: dict = {}
        self._conv: dict = {}

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


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> _Store:
    return _Store(tmp_path_factory.mktemp("models"))
