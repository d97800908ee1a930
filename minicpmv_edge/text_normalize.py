"""The Unicode normalization a model's source tokenizer applies before splitting text.

Hugging Face's Qwen tokenizers normalize to NFC first (tokenizer.json
`"normalizer": {"type": "NFC"}`); llama.cpp's BPE tokenizer normalizes nothing,
so "e" + U+0301 would tokenize differently from "é". The runtimes therefore
normalize prompt text right before llama.cpp tokenizes it: Python here, the C
bridge in mobile_bridge/src/normalize.cpp (same rule, tables from unicodedata).

Which form: `minicpmv_edge.tokenizer.normalizer` in the text GGUF (written by
`convert` from the source tokenizer). GGUFs written by other tools lack it; there
the form follows from `tokenizer.ggml.pre`, the pre-tokenizer llama.cpp derived
from the same tokenizer: the Qwen pre-tokenizers ("qwen2" for Qwen2/Qwen3 and
MiniCPM-V 2.6/4.5, "qwen35" for Qwen3.5 and MiniCPM-V 4.6) come from tokenizers
that apply NFC; every other one (Llama 3's "llama-bpe", SentencePiece models)
none.
"""

from __future__ import annotations

import unicodedata
from typing import Callable

from minicpmv_edge import schema

FORMS = ("NFC", "NFD", "NFKC", "NFKD")
NFC_PRE_TOKENIZERS = ("qwen2", "qwen35")


def normalizer_from_metadata(meta: Callable[[str], str | None]) -> str:
    """The form for a text GGUF, given a metadata lookup (key -> string value or None)."""
    recorded = meta(schema.EDGE_TOKENIZER_NORMALIZER)
    if recorded is not None:
        return recorded if recorded in FORMS else ""
    return "NFC" if meta("tokenizer.ggml.pre") in NFC_PRE_TOKENIZERS else ""


def normalize(text: str, form: str) -> str:
    """`text` in `form` ("" leaves it as is)."""
    if not form or unicodedata.is_normalized(form, text):
        return text
    return unicodedata.normalize(form, text)
