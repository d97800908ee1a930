"""llama.cpp tokenizes like the source tokenizer.json (the `tokenizers` library).

A wrong pre-tokenizer name or a missing special token does not fail to load; it
silently degrades every prompt. So: 60 mixed strings per family, identical ids.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from minicpmv_edge.edge_runtime.engine import Model

STRINGS = [
    "Hello, world!", "hello world", " leading space", "trailing space ", "  two leading", "multiple   spaces   here",
    "tabs\tand\ttabs", "new\nline", "\n\nstarts with newlines", "ends with newline\n", "\r\nwindows\r\nlines",
    "中文分词测试", "图片里有什么？请详细描述。", "日本語のテキスト", "한국어 문장입니다", "混合 English 和中文 text",
    "emoji 🦊🐼🎉", "👨‍👩‍👧‍👦 family", "flags 🇨🇳🇺🇸", "math ∑∫√∞ ≠ ≤", "accents café naïve façade", "Ünïcödé",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { a[i] = i; }", "if x == 3:\n\tprint('ok')",
    "<html><body>hi</body></html>", "SELECT * FROM t WHERE id=1;", "http://example.com/path?q=1&r=2",
    "numbers 1234567890", "3.14159 2.71828", "1,000,000 and 10^6", "phone +1-800-555-0199",
    "I'm sure you've seen it, they'll come, we'd go", "DON'T SHOUT", "it's", "CamelCaseWordsHere", "snake_case_words",
    "!!!???...", "—em dash– en dash", "«quotes» “curly” ‘single’", "a", " ", "  ", "\t", "\n",
    "<|im_start|>user\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n",
    "<image>./</image>", "<slice></slice><image_id>0</image_id>", "text <image> more </image> end",
    "<|im_end|><|im_end|>", "before<|im_start|>after", "<think>\nreasoning\n</think>\n\nanswer",
    "Ａｂｃ full-width", "ﬁ ligature", "\u00a0non-breaking\u00a0space", "zero\u200bwidth",
    "mixed\u3000ideographic space", "x" * 40, "ab" * 20 + " " + "cd" * 10, "Ω≈ç√∫˜µ≤≥÷",
]

FAMILIES = ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5", "minicpmv-4.6"]


@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_tokenizes_like_tokenizers(store, family):
    assert len(STRINGS) >= 50
    res = store.converted(family)
    hf = Tokenizer.from_file(str(res.manifest.source) + "/tokenizer.json")
    model = Model(str(res.text_path), vocab_only=True)
    spm = model.meta("tokenizer.ggml.model") == "llama"
    mismatches = []
    for s in STRINGS:
        # as in every chat prompt, text after a special token; bare strings too for byte-level BPE
        # (SentencePiece: llama.cpp has no "prefix only the very start" mode, docs/tokenizers.md)
        for text in ([] if spm else [s]) + ["<|im_start|>user\n" + s]:
            want = hf.encode(text, add_special_tokens=False).ids
            got = model.tokenize(text, add_special=False, parse_special=True)
            if got != want:
                mismatches.append((text, want, got))
    model.close()
    assert not mismatches, f"{family}: {len(mismatches)} strings differ, first: {mismatches[0]!r}"


@pytest.mark.parametrize("family", FAMILIES)
def test_media_tokens_are_single_tokens(store, family):
    res = store.converted(family)
    model = Model(str(res.text_path), vocab_only=True)
    for tok in ("<image>", "</image>", "<slice>", "</slice>"):
        ids = model.tokenize(tok)
        assert len(ids) == 1 and model.piece(ids[0]).decode() == tok, (family, tok, ids)
    model.close()
