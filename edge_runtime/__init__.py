"""A thin runtime for MiniCPM-V GGUF pairs on llama.cpp (CPU, Metal): see api.py; several
conversations at once on one model: pool.py."""

from .api import ChatResult, LoadOptions, MiniCPMV, Piece, Timings
from .pool import QueueFull, Request, SlotPool

__all__ = ["MiniCPMV", "LoadOptions", "ChatResult", "Piece", "Timings", "SlotPool", "Request", "QueueFull"]
