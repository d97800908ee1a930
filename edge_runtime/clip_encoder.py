"""llama.cpp's vision encoder fed with crops we preprocessed ourselves (edge_runtime/native/clip_encode.cpp).

mtmd.h only takes RGB bitmaps and re-slices them with its own rules, so crops laid out the way
transformers' processors lay them out (edge_runtime/processor_images.py) reach the encoder through
a 90-line C shim over clip.h, compiled once per llama.cpp version against the headers of the
llama-cpp-python sdist of the installed version and linked to the libmtmd it ships. Same graph,
same weights, same kernels as mtmd_encode_chunk: for identical pixels the embeddings are
bit-identical (tests/test_families_e2e.py checks that too).

Build needs a C++17 compiler (g++ or clang++) and the sdist headers: an unpacked copy named by
MINICPMV_EDGE_LLAMA_SRC (its vendor/llama.cpp), /work/sdist, the cache, or a `pip download`.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np

from minicpmv_edge.errors import GGUFError, InputError, MediaError, RuntimeFailure

from .engine import init_backend

log = logging.getLogger(__name__)

CACHE = Path(os.environ.get("MINICPMV_EDGE_CACHE", Path.home() / ".cache" / "minicpmv-edge"))
SOURCE = Path(__file__).with_name("native") / "clip_encode.cpp"
SHARED_HEADER = SOURCE.with_name("clip_shim.h")  # included by every shim: part of each build's key
ABI_VERSION = 1
_build_lock = threading.Lock()


def _llama_cpp_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def _lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def llama_source() -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist of the installed version (headers only)."""
    env = os.environ.get("MINICPMV_EDGE_LLAMA_SRC")
    if env:
        return Path(env)
    ver = _llama_cpp_version()
    for base in (Path("/work/sdist"), CACHE / "sdist"):
        cand = base / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
        if (cand / "tools" / "mtmd" / "clip.h").exists():
            return cand
    dl = CACHE / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    log.warning("downloading the llama-cpp-python %s sdist for the vision-encoder headers (once)", ver)
    rc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                         f"llama-cpp-python=={ver}", "-d", str(dl)], capture_output=True, text=True)
    if rc.returncode != 0:
        raise RuntimeFailure(f"cannot download the llama-cpp-python {ver} sdist for the encoder headers "
                             f"(set MINICPMV_EDGE_LLAMA_SRC): {rc.stderr.strip().splitlines()[-1:]}")
    with tarfile.open(next(dl.glob(f"llama_cpp_python-{ver}.tar.gz"))) as tf:
        tf.extractall(dl, filter="data")
    return dl / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"


def _compiler() -> str:
    for cxx in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cxx and shutil.which(cxx):
            return cxx
    raise RuntimeFailure("no C++ compiler (set CXX): the processor-exact image path builds a small encoder "
                         "shim over llama.cpp once")


def shim_path(source: Path = SOURCE) -> Path:
    """Build a shim over clip.h (`source`: one C++ file in native/) if needed; returns the shared
    library's path."""
    lib = _lib_dir()
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    key = hashlib.sha256(source.read_bytes() + SHARED_HEADER.read_bytes() + str(lib.resolve()).encode()
                         + _llama_cpp_version().encode())
    stem = "libedge_clip" if source == SOURCE else f"libedge_{source.stem}"
    out = CACHE / "clip-shim" / f"{stem}-{key.hexdigest()[:16]}{suffix}"
    with _build_lock:
        if out.exists():
            return out
        src = llama_source()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cmd = [_compiler(), "-std=c++17", "-O2", "-shared", "-fPIC", f"-I{src / 'include'}",
               f"-I{src / 'ggml' / 'include'}", f"-I{src / 'tools' / 'mtmd'}", str(source), f"-L{lib}",
               "-lmtmd", "-lggml", "-lggml-base", f"-Wl,-rpath,{lib}", "-o", str(tmp)]
        rc = subprocess.run(cmd, capture_output=True, text=True)
        if rc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeFailure(f"building the encoder shim failed: {rc.stderr.strip()[-400:]}")
        os.replace(tmp, out)
        return out


_LIB = None


def _load():
    global _LIB
    if _LIB is None:
        lib = ctypes.CDLL(str(shim_path()))
        lib.edge_clip_abi_version.restype = ctypes.c_int
        if lib.edge_clip_abi_version() != ABI_VERSION:
            raise RuntimeFailure("encoder shim ABI mismatch; delete the clip-shim cache folder")
        lib.edge_clip_init.restype = ctypes.c_void_p
        lib.edge_clip_init.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.edge_clip_free.argtypes = [ctypes.c_void_p]
        lib.edge_clip_n_embd.argtypes = [ctypes.c_void_p]
        lib.edge_clip_n_tokens.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.edge_clip_encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        _LIB = lib
    return _LIB


class ClipEncoder:
    """The mmproj's vision tower + merger, one processor crop at a time."""

    marker = "<__media__>"  # what build_prompt puts where an image goes (mtmd's default marker)

    def __init__(self, mmproj_path: str | Path, n_threads: int = 2, use_gpu: bool = False):
        init_backend()
        self._lib = _load()
        self.path = str(mmproj_path)
        self.n_threads = int(n_threads)
        self.ptr = self._lib.edge_clip_init(self.path.encode(), int(bool(use_gpu)))
        if not self.ptr:
            raise GGUFError("llama.cpp could not load this projector (see log with -v)", mmproj_path)
        self.n_embd = int(self._lib.edge_clip_n_embd(self.ptr))
        # one clip context: the pool's scheduler and a plain chat() may both encode (edge_runtime/slots.py)
        self._lock = threading.Lock()

    def n_tokens(self, width: int, height: int) -> int:
        return int(self._lib.edge_clip_n_tokens(self.ptr, int(width), int(height)))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """HxWx3 normalised float32 -> [n_tokens, n_embd] float32."""
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != 3:
            raise MediaError(f"expected HxWx3 pixels, got {list(x.shape)}")
        h, w = x.shape[:2]
        n = self.n_tokens(w, h)
        if n <= 0:
            raise InputError(f"a {w}x{h} crop is not a valid input for this projector")
        out = np.empty((n, self.n_embd), np.float32)
        with self._lock:
            rc = self._lib.edge_clip_encode(self.ptr, self.n_threads, w, h, x.ctypes.data, out.ctypes.data, out.size)
        if rc != 0:
            raise RuntimeFailure(f"the vision encoder failed on a {w}x{h} crop (code {rc})")
        return out

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self._lib.edge_clip_free(self.ptr)
            self.ptr = None

    def __del__(self):
        self.close()


__all__ = ["ClipEncoder", "shim_path", "llama_source"]
