"""Hugging Face MiniCPM-V checkpoint -> llama.cpp GGUF pair (no torch, no transformers)."""

from .pipeline import ConvertResult, convert

__all__ = ["convert", "ConvertResult"]
