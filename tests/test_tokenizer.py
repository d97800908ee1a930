"""llama.cpp on our GGUF tokenizes like the source tokenizer (the `tokenizers` library).

A wrong pre-tokenizer name, token type or missing normalization does not fail to
load; it silently degrades every prompt. So: >= 200 strings per family (CJK,
emoji, code, whitespace runs, decomposed Unicode, chat-formatted prompts carrying
every added token of the real tokenizer), identical ids from llama.cpp (through
edge_runtime's Model.tokenize, which applies the source's Unicode normalization)
and from `tokenizers` reading the real files (4.5: the reference slow files;
4.6: the reference tokenizer.json; 2.6: the real Qwen2 ranks; 4.0: the reconstruction).
"""

from __future__ import annotations

import gzip
import unicodedata

import pytest
from tokenizers import Tokenizer

from minicpmv_edge.edge_runtime.engine import Model
from minicpmv_edge.fixtures.corpus import CORPUS
from minicpmv_edge.fixtures.sources import real_dir

BASE = [
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
    # decomposed Unicode: the source tokenizers normalize to NFC, llama.cpp does not
    "e\u0301t\u00e9", "cafe\u0301 au lait", "n\u0303o\u0308", "A\u030a\u0301ngstro\u0308m", "\u1100\u1161\u11a8 \u1112\u1161\u11ab",
    "q\u0307\u0323", "\u212b \u2126 \u212a", "\u0958\u0959 \u0915\u093c", "e\u0327\u0301 e\u0301\u0327", "\u0301 leading mark",
    "Vie\u0302\u0323t Nam", "\u00c5\u0301", "o\u0308\u0304 u\u0308\u0301",
    # whitespace runs and code
    "a" + " " * 17 + "b", "\n" * 7 + "x", "x" + "\t" * 5 + "y", " \n \n\t \r\n", "    " * 6 + "return 0;",
    "    def g(self):\n        pass\n\n\n", "```python\nprint('hi')\n```", "#include <stdio.h>\nint main(){}",
    "λx.x ∘ f", "arr[::-1]", "x<<=2; y>>>=1;", "a && b || !c", "0x7fffffff", "1e-10", "-0.0", "3.0e+08",
    # more scripts and symbols
    "Ελληνικά γράμματα", "Русский текст с ёлкой", "עברית מימין לשמאל", "العربية من اليمين", "हिन्दी पाठ",
    "ภาษาไทยไม่มีช่องว่าง", "Tiếng Việt có dấu", "Türkçe İıĞğ", "Polski: zażółć gęślą jaźń", "Ísland þú ð",
    "ქართული ენა", "Հայերեն", "ᚠᚢᚦ runes", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math bold", "😀😃😄😁😆😅", "🏳️‍🌈 🏴‍☠️", "👍🏽👍🏿", "1️⃣ #️⃣",
    "™ © ® ℠", "½ ¼ ¾ ⅓", "℃ ℉ ㎏ ㎡", "①②③", "ⅠⅡⅢⅣ", "→ ← ↑ ↓ ⇒", "♠♣♥♦", "✓✗✔✘",
    "price: $12.99 / €9,50 / ¥100", "50% off!!", "user@example.org", "C:\\Windows\\System32", "~/.bashrc",
    "SELECT a, b\nFROM c;", "{\"k\": [1, 2.5, null]}", "<a href='x'>y</a>", "// comment\n/* block */", "x = y ?? z",
    "let v: Vec<u8> = vec![];", "fn main() -> Result<(), E> {}", "public static void main(String[] args)",
    "$ ls -la | grep foo", "SGVsbG8gd29ybGQ=", "deadbeef cafebabe", "AAAAAAAAAAAAAAAAAAAA", "aaaaaaaaaaaaaaaaaaaa",
    "........................", "--------------------", "=====", "______", "* * * * *", "\u00e9 escaped",
]


def corpus_strings() -> list[str]:
    extra = list(CORPUS)
    extra += [unicodedata.normalize("NFD", s) for s in CORPUS if unicodedata.normalize("NFD", s) != s]
    extra += [s.upper() for s in CORPUS[:20]] + [s.replace(" ", "  ") for s in CORPUS[:20]]
    extra += [f"{a} {b}" for a, b in zip(CORPUS[:25], CORPUS[7:32])]
    return list(dict.fromkeys(BASE + extra))  # distinct, in order


def reference(family: str, res) -> Tokenizer:
    if family == "minicpmv-4.6":
        return Tokenizer.from_str(gzip.decompress((real_dir("4.6") / "tokenizer.json.gz").read_bytes()).decode())
    if family == "minicpmv-4.5":
        from transformers import Qwen2Tokenizer  # what MiniCPMVTokenizerFast extends; reads the slow files

        return Qwen2Tokenizer.from_pretrained(str(real_dir("4.5"))).backend_tokenizer
    return Tokenizer.from_file(str(res.manifest.source) + "/tokenizer.json")


FAMILIES = ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5", "minicpmv-4.6"]


@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_tokenizes_like_the_source(store, family):
    res = store.converted(family)
    ref = reference(family, res)
    model = Model(str(res.text_path), vocab_only=True)
    spm = model.meta("tokenizer.ggml.model") == "llama"
    added = [t.content for t in ref.get_added_tokens_decoder().values()]
    strings = corpus_strings()
    # chat-formatted prompts carrying every added token
    strings += [f"<|im_start|>user\nlook {tok} here{tok}\n<|im_end|>\n<|im_start|>assistant\n{tok}" for tok in added]
    assert len(strings) >= 200
    mismatches, n = [], 0
    for s in strings:
        # as in every chat prompt, text after a special token; bare strings too for byte-level BPE
        # (SentencePiece: llama.cpp has no "prefix only the very start" mode, docs/tokenizers.md)
        for text in ([] if spm else [s]) + ["<|im_start|>user\n" + s]:
            want = ref.encode(text, add_special_tokens=False).ids
            got = model.tokenize(text, add_special=False, parse_special=True)
            n += 1
            if got != want:
                mismatches.append((text, want, got))
    model.close()
    assert n >= 200
    assert not mismatches, f"{family}: {len(mismatches)} of {n} strings differ, first: {mismatches[0]!r}"


@pytest.mark.parametrize("family", FAMILIES)
def test_media_tokens_are_single_tokens(store, family):
    res = store.converted(family)
    model = Model(str(res.text_path), vocab_only=True)
    for tok in ("<image>", "</image>", "<slice>", "</slice>"):
        ids = model.tokenize(tok)
        assert len(ids) == 1 and model.piece(ids[0]).decode() == tok, (family, tok, ids)
    model.close()
