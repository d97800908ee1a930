"""A thin runtime for MiniCPM-V GGUF pairs on llama.cpp (CPU, Metal): see api.py."""

from .api import ChatResult, LoadOptions, MiniCPMV, Piece, Timings

__all__ = ["MiniCPMV", "LoadOptions", "ChatResult", "Piece", "Timings"]
