"""A persistent, bounded cache of image embeddings on disk (opt-in: LoadOptions.image_cache_dir).

An app that reopens a photo after a restart should not pay the vision encoder again (seconds per
slice on a phone). Each image chunk's embedding is one file:

    DIR/<namespace>/<sha256(key)[:40]>.emb
    b"MCVEMB\\x00\\x01" | u32 little-endian header length | JSON header | float32 rows

- namespace: the encoder's fingerprint (`encoder_namespace`): a hash of the whole projector file
  (so a re-quantized or fine-tuned projector never shares entries), the encoder kind (mtmd or an
  ONNX export and its precision) and the llama.cpp version; key: the session's chunk key (the
  pixels' digest, the size the budget shrank them to, which chunk of the image), so the pixels and
  the slice settings are in it.
- the header repeats namespace and key and carries the payload's shape and sha256: a file that is
  truncated, altered, or belongs to another namespace or key is ignored with a warning, never used.
- writes go to a temporary name and are renamed when complete; the total size of the directory's
  entries stays under `max_bytes` by removing the least recently used files (reads refresh mtime).

The projector hash reads the file once (~1 s per GB); it is remembered in DIR/fingerprints.json
by path, size, mtime and inode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"MCVEMB\x00\x01"
SUFFIX = ".emb"
_MAX_HEADER = 1 << 16


class DiskEmbeddingStore:
    def __init__(self, directory: str | Path, namespace: str, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.root = Path(directory)
        self.namespace = namespace
        self.dir = self.root / namespace[:32]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes of all entries under root, counted once then kept
        self.hits = self.misses = self.rejected = self.evicted = 0

    def _path(self, key: str) -> Path:
        return self.dir / (hashlib.sha256(key.encode()).hexdigest()[:40] + SUFFIX)

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as exc:
            return self._reject(path, f"unreadable ({exc.strerror or exc})")
        arr = self._parse(path, data, key)
        if arr is None:
            return None
        try:
            os.utime(path)  # least recently used goes first
        except OSError:
            pass
        self.hits += 1
        return arr

    def _parse(self, path: Path, data: bytes, key: str) -> np.ndarray | None:
        if len(data) < len(MAGIC) + 4 or not data.startswith(MAGIC):
            return self._reject(path, "not an embedding-cache file (bad magic)")
        (n,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        if n > _MAX_HEADER or start + n > len(data):
            return self._reject(path, "truncated header")
        try:
            head = json.loads(data[start:start + n].decode("utf-8"))
            shape = [int(x) for x in head["shape"]]
            ns, k, digest, dtype = head["namespace"], head["key"], head["sha256"], head["dtype"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return self._reject(path, "corrupt header")
        if ns != self.namespace:
            return self._reject(path, "made by another projector or encoder")
        if k != key:
            return self._reject(path, "holds another image chunk")
        payload = memoryview(data)[start + n:]
        if dtype != "float32" or len(shape) != 2 or min(shape) < 1 or len(payload) != shape[0] * shape[1] * 4:
            return self._reject(path, "payload does not match its header (truncated?)")
        if hashlib.sha256(payload).hexdigest() != digest:
            return self._reject(path, "payload checksum mismatch")
        return np.frombuffer(payload, dtype="<f4").reshape(shape).astype(np.float32)

    def _reject(self, path: Path, why: str) -> None:
        self.rejected += 1
        log.warning("ignoring image-embedding cache file %s: %s", path, why)
        return None

    def put(self, key: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype="<f4")
        if arr.ndim != 2:
            raise ValueError("embeddings are [tokens, n_embd]")
        payload = arr.tobytes()
        head = json.dumps({"namespace": self.namespace, "key": key, "shape": list(arr.shape), "dtype": "float32",
                           "sha256": hashlib.sha256(payload).hexdigest()}).encode()
        blob = MAGIC + struct.pack("<I", len(head)) + head + payload
        if len(blob) > self.max_bytes:
            return
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            old = path.stat().st_size if path.exists() else 0
            with open(tmp, "wb") as fh:
                fh.write(blob)
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only disk must not fail the request
            log.warning("cannot write the image-embedding cache %s: %s", path, exc.strerror or exc)
            try:
                tmp.unlink()
            except OSError:
                pass
            return
        with self._lock:
            if self._total is None:
                self._total = self._scan_total()
            else:
                self._total += len(blob) - old
            if self._total > self.max_bytes:
                self._evict()

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for p in self.root.glob(f"*/*{SUFFIX}"):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return out

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _evict(self) -> None:
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        for _, size, p in entries:
            if total <= self.max_bytes:
                break
            try:
                p.unlink()
                total -= size
                self.evicted += 1
            except OSError:
                pass
        self._total = total


def file_fingerprint(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """blake2b of a whole file, remembered in memo_dir/fingerprints.json by (path, size, mtime, inode)."""
    path = Path(path).resolve()
    st = path.stat()
    ident = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    memo_file = Path(memo_dir) / "fingerprints.json" if memo_dir else None
    memo: dict = {}
    if memo_file is not None:
        try:
            memo = json.loads(memo_file.read_text())
            if not isinstance(memo, dict):
                memo = {}
        except (OSError, ValueError):
            memo = {}
        hit = memo.get(ident)
        if isinstance(hit, str) and len(hit) == 64:
            return hit
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo_file is not None:
        memo[ident] = digest
        tmp = memo_file.with_name(f".fingerprints.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(memo))
            os.replace(tmp, memo_file)
        except OSError:
            pass
    return digest


def encoder_namespace(mmproj: str | Path, encoder: str, cache_dir: str | Path) -> str:
    """The namespace of one encoder: projector file hash + encoder identity + llama.cpp version."""
    try:
        from importlib.metadata import version

        llama = version("llama-cpp-python")
    except Exception:  # noqa: BLE001 - not installed as a distribution: no version to key on
        llama = "unknown"
    text = f"{file_fingerprint(mmproj, cache_dir)}|{encoder}|llama-cpp-python {llama}"
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["DiskEmbeddingStore", "encoder_namespace", "file_fingerprint", "MAGIC"]
