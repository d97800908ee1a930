"""The persistent image-embedding cache: survives a restart, never trusts a corrupt or foreign file,
stays under its size cap, and keeps projectors and encoders apart."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime.embedding_store import DiskEmbeddingStore, encoder_namespace
from tests.runtime_helpers import noise_image

GREEDY = dict(temperature=0, repeat_penalty=1.0, max_tokens=10)


def _emb(seed: int, rows: int = 64, width: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)


def test_round_trip_is_exact(tmp_path):
    s = DiskEmbeddingStore(tmp_path, "ns-a", 1 << 20)
    a = _emb(0)
    s.put("img/0/64", a)
    b = DiskEmbeddingStore(tmp_path, "ns-a", 1 << 20).get("img/0/64")  # a fresh object: as after a restart
    assert b is not None and b.dtype == np.float32 and np.array_equal(a, b)
    assert s.get("img/1/64") is None
    assert not list(tmp_path.rglob("*.tmp"))  # written under a temporary name, renamed when complete


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "header", "empty"])
def test_corrupt_files_are_ignored_with_a_warning(tmp_path, caplog, damage):
    s = DiskEmbeddingStore(tmp_path, "ns-a", 1 << 20)
    s.put("k", _emb(1))
    (path,) = tmp_path.rglob("*.emb")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-7] ^= 0x40  # one bit of one float
    elif damage == "truncate":
        data = data[:-100]
    elif damage == "garbage":
        data = bytearray(np.random.default_rng(2).bytes(len(data)))
    elif damage == "header":
        data[20:30] = b"\xff" * 10
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert s.get("k") is None
    assert any(str(path) in r.getMessage() and "ignoring" in r.getMessage() for r in caplog.records)
    assert s.rejected == 1


def test_foreign_files_are_not_trusted(tmp_path, caplog):
    """A file of another projector (or another chunk) under this entry's name is refused, not used."""
    other = DiskEmbeddingStore(tmp_path, "ns-other", 1 << 20)
    other.put("k", _emb(3))
    mine = DiskEmbeddingStore(tmp_path, "ns-mine", 1 << 20)
    (src,) = tmp_path.rglob("*.emb")
    mine._path("k").write_bytes(src.read_bytes())
    with caplog.at_level(logging.WARNING):
        assert mine.get("k") is None
    assert "another projector or encoder" in caplog.text
    mine.put("k2", _emb(4))
    mine._path("k").write_bytes(mine._path("k2").read_bytes())
    assert mine.get("k") is None and "another image chunk" in caplog.text


def test_size_cap_evicts_the_least_recently_used(tmp_path):
    import os
    import time

    probe = DiskEmbeddingStore(tmp_path / "probe", "ns", 1 << 20)
    probe.put("k0", _emb(0))
    one = next((tmp_path / "probe").rglob("*.emb")).stat().st_size  # every entry has this size here
    s = DiskEmbeddingStore(tmp_path / "c", "ns", 3 * one)
    for i in range(3):
        s.put(f"k{i}", _emb(i))
    old = time.time() - 100
    for i in range(3):  # k0 oldest ... k2 newest
        os.utime(s._path(f"k{i}"), (old + i, old + i))
    assert s.get("k0") is not None  # reading refreshes: k1 is now the least recently used
    s.put("k3", _emb(3))
    assert sum(p.stat().st_size for p in (tmp_path / "c").rglob("*.emb")) <= 3 * one
    assert s.get("k1") is None and s.evicted == 1
    assert all(s.get(k) is not None for k in ("k0", "k2", "k3"))


OURS = r"""
import json, sys
from PIL import Image
from minicpmv_edge.edge_runtime import MiniCPMV
text, mmproj, image, cache, mtype = sys.argv[1:6]
m = MiniCPMV(text, mmproj, n_ctx=2048, n_threads=2, image_cache_dir=cache, mmproj_type=mtype)
r = m.chat([{"role": "user", "content": [Image.open(image), "What is it?"]}], temperature=0, repeat_penalty=1.0,
           max_tokens=10)
print(json.dumps({"raw": r.raw, "encoded": m.counters.images_encoded, "hits": m.counters.image_cache_hits}))
"""


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_embeddings_survive_a_restart(store, tmp_path, family):
    res = store.converted(family)
    img = tmp_path / "photo.png"
    Image.fromarray(noise_image(700, 500, seed=31)).save(img)
    cache = tmp_path / "cache"

    def run(mtype="f16"):
        out = subprocess.run([sys.executable, "-c", OURS, str(res.text_path), str(res.mmproj_path), str(img),
                              str(cache), mtype], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["encoded"] > 0 and first["hits"] == 0
    assert second["encoded"] == 0 and second["hits"] == first["encoded"]  # a new process encodes nothing
    assert second["raw"] == first["raw"]
    plain = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=2048, n_threads=2, mmproj_type="f16")
    r = plain.chat([{"role": "user", "content": [Image.open(img), "What is it?"]}], **GREEDY)
    assert r.raw == second["raw"]  # the same answer as without any cache
    plain.close()
    # another storage type of the projector gives other embeddings: its own namespace, nothing shared
    third = run("q8_0")
    assert third["encoded"] == first["encoded"] and third["hits"] == 0


def test_namespace_follows_the_projector_bytes(store, tmp_path):
    res = store.converted("minicpmv-4.5")
    a = encoder_namespace(res.mmproj_path, "llama.cpp", tmp_path)
    assert a == encoder_namespace(res.mmproj_path, "llama.cpp", tmp_path)
    assert a != encoder_namespace(res.mmproj_path, "onnx:fp32:x", tmp_path)
    copy = tmp_path / "copy.gguf"
    data = bytearray(res.mmproj_path.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: another projector
    copy.write_bytes(bytes(data))
    assert encoder_namespace(copy, "llama.cpp", tmp_path) != a


def test_cache_options_are_checked(store, tmp_path):
    from minicpmv_edge.errors import InputError

    res = store.converted("minicpmv-4.5")
    with pytest.raises(InputError, match="image_cache_mb"):
        MiniCPMV(res.text_path, res.mmproj_path, n_ctx=256, image_cache_dir=str(tmp_path), image_cache_mb=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="image cache"):
        MiniCPMV(res.text_path, res.mmproj_path, n_ctx=256, image_cache_dir=str(blocker / "sub"))
