"""minicpmv-edge: convert, quantize and run MiniCPM-V on laptops, Macs and phones.

This package is the composition root: the `minicpmv-edge` command, the one
error hierarchy, and the GGUF metadata schema shared by the converter (which
writes it) and the runtimes (which read it). It imports neither side at import
time, so `convert` and `edge_runtime` never import each other.
"""

__version__ = "0.1.0"
