"""minicpmv-edge: convert, quantize and run MiniCPM-V on laptops, Macs and phones.

This package is the composition root: the `minicpmv-edge` command, the one
error hierarchy, and the GGUF metadata schema shared by the converter (which
writes it) and the runtimes (which read it). It imports neither side at import
time, so `convert` and `edge_runtime` never import each other.
"""

__version__ = "0.1.0"

# before anything can load llama.cpp's libraries: a CUDA build of them crashes at model load when
# numpy was imported first (native_libs.py)
from .native_libs import share_cxx_runtime as _share_cxx_runtime  # noqa: E402

_share_cxx_runtime()
