"""Load order of native libraries that llama.cpp's CUDA builds need (issue 12: "a CUDA build crashes at
model load").

Seen on the lent GPU machine (CUDA 13.0, g++ 13.3, llama-cpp-python 0.3.36 built by pip with
GGML_CUDA=ON): libggml-cuda.so carries its own copy of libstdc++ (2812 exported std:: symbols, no
DT_NEEDED on libstdc++.so.6). Python loads extension modules RTLD_LOCAL, so when numpy (whose C++
core links the system libstdc++.so.6) is imported before llama_cpp, the system copy is initialised
but invisible to llama.cpp's libraries; libllama then binds `std::ostream::operator<<(long)` to
libggml-cuda's copy, whose locale facet ids disagree with the locale the system copy built, and
llama_model::print_info() jumps into the wrong facet: SIGSEGV in every llama_model_load_from_file
(backtrace in BENCHMARKS.md). PIL first does not crash (no C++); llama_cpp first does not either.

The fix: put the system libstdc++ into the global symbol scope (RTLD_GLOBAL) before any llama.cpp
library is loaded or first called, so that every std:: reference in the process resolves to that
one copy, whatever was imported before. Done when `minicpmv_edge` is imported and again before
llama_cpp is (extras.need); a no-op off Linux (macOS: two-level namespaces; Windows: no ELF scope).
"""

from __future__ import annotations

import ctypes
import os
import sys

_done: str | None = None
LIBSTDCXX = "libstdc++.so.6"


def share_cxx_runtime() -> str | None:
    """Promote the system libstdc++ to the global scope (idempotent); its name, or None when absent."""
    global _done
    if _done is not None or not sys.platform.startswith("linux"):
        return _done
    try:
        ctypes.CDLL(LIBSTDCXX, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    except OSError:  # no libstdc++ (musl without C++, a static Python): nothing to share
        return None
    _done = LIBSTDCXX
    return _done


__all__ = ["share_cxx_runtime"]
