"""A byte-level BPE tokenizer as a checkpoint ships it: `tokenizer.json`, or the slow files.

Hugging Face checkpoints carry the same tokenizer in one of two forms, and
transformers reads either: `tokenizer.json` (the `tokenizers` library's format,
with the split regex and the normalizer spelled out), or `vocab.json` +
`merges.txt` + `tokenizer_config.json` (+ `added_tokens.json`), where the
regex and normalizer are implied by `tokenizer_config.json`'s `tokenizer_class`.
Both are read here into one `BpeSource`, so the GGUF vocabulary is the same
either way (tests/test_convert_tokenizer.py converts both forms and compares).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from minicpmv_edge.errors import CheckpointError, UnsupportedModelError

from .json_files import load_json

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# split regex -> llama.cpp tokenizer.ggml.pre (src/llama-vocab.cpp implements exactly these)
PRE_BY_REGEX = {QWEN2_REGEX: "qwen2", QWEN35_REGEX: "qwen35", LLAMA3_REGEX: "llama-bpe"}

# Slow-files folders: transformers' class decides regex and normalizer (its __init__ builds
# them: models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX + normalizers.NFC()).
# MiniCPMVTokenizerFast is 2.6/4.5's remote-code subclass of Qwen2TokenizerFast that only
# adds properties. Qwen3_5Tokenizer is absent on purpose: transformers reads it from
# tokenizer.json only (it declares no vocab files), so neither do we.
SLOW_CLASSES = {
    "Qwen2Tokenizer": (QWEN2_REGEX, "NFC"), "Qwen2TokenizerFast": (QWEN2_REGEX, "NFC"),
    "MiniCPMVTokenizerFast": (QWEN2_REGEX, "NFC"),
}
UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


@dataclass(frozen=True)
class AddedToken:
    id: int
    content: str
    special: bool
    normalized: bool


@dataclass
class BpeSource:
    vocab: dict[str, int]  # base BPE tokens
    added: list[AddedToken]
    pre: str  # llama.cpp pre-tokenizer name
    normalizer: str  # Unicode normalization form applied before splitting, "" for none
    form: str  # "tokenizer.json" or "slow"



def has_bpe_files(src: Path) -> bool:
    return (src / "tokenizer.json").is_file() or ((src / "vocab.json").is_file() and (src / "merges.txt").is_file())


def read_bpe(src: Path) -> BpeSource:
    if (src / "tokenizer.json").is_file():
        return _from_tokenizer_json(src / "tokenizer.json")
    return _from_slow_files(src)


def _split_regex(pre_tok: dict | None) -> str | None:
    if not pre_tok:
        return None
    if pre_tok.get("type") == "Sequence":
        for p in pre_tok.get("pretokenizers", []):
            if (r := _split_regex(p)) is not None:
                return r
        return None
    if pre_tok.get("type") == "Split":
        pat = pre_tok.get("pattern", {})
        return pat.get("Regex") or pat.get("String")
    return None


def _unicode_form(node: dict | None, path: Path) -> str:
    """The Unicode normalization a tokenizer.json normalizer applies ("" for none).
    llama.cpp's BPE tokenizer normalizes nothing, so the runtime applies this form to
    text before tokenizing; any other normalizer step would be silently skipped: refused."""
    if not node:
        return ""
    kind = node.get("type")
    if kind in UNICODE_FORMS:
        return kind
    if kind == "Sequence":
        forms = [_unicode_form(n, path) for n in node.get("normalizers", [])]
        forms = [f for f in forms if f]
        if len(forms) > 1:
            raise UnsupportedModelError(f"tokenizer normalizer applies {forms}; one Unicode form is supported", path)
        return forms[0] if forms else ""
    raise UnsupportedModelError(f"tokenizer normalizer {kind!r} is not supported (llama.cpp's BPE tokenizer "
                                "cannot apply it)", path)


def _from_tokenizer_json(path: Path) -> BpeSource:
    tj = load_json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UnsupportedModelError("tokenizer.json is not a byte-level BPE (nor is there a tokenizer.model)", path)
    regex = _split_regex(tj.get("pre_tokenizer"))
    pre = PRE_BY_REGEX.get(regex or "")
    if pre is None:
        raise UnsupportedModelError(
            f"unknown pre-tokenizer regex {regex!r}; supported: {sorted(set(PRE_BY_REGEX.values()))}", path)
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise CheckpointError("tokenizer.json has no model.vocab object", path)
    added = []
    for at in tj.get("added_tokens", []):
        try:
            added.append(AddedToken(int(at["id"]), str(at["content"]), bool(at.get("special")),
                                    bool(at.get("normalized", False))))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"malformed added token {at!r}", path) from None
    return BpeSource(vocab, added, pre, _unicode_form(tj.get("normalizer"), path), "tokenizer.json")


def _from_slow_files(src: Path) -> BpeSource:
    cfg_path = src / "tokenizer_config.json"
    if not cfg_path.is_file():
        raise CheckpointError("vocab.json + merges.txt without tokenizer_config.json (which names the tokenizer "
                              "class and lists the added tokens)", src)
    cfg = load_json(cfg_path)
    cls = cfg.get("tokenizer_class")
    if cls not in SLOW_CLASSES:
        raise UnsupportedModelError(
            f"tokenizer_class {cls!r} with only vocab.json + merges.txt: its split regex is unknown; supported: "
            f"{sorted(SLOW_CLASSES)} (or ship tokenizer.json)", cfg_path)
    regex, form = SLOW_CLASSES[cls]
    vocab = load_json(src / "vocab.json")
    by_id: dict[int, AddedToken] = {}
    decoder = cfg.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise CheckpointError("added_tokens_decoder is not an object", cfg_path)
    for key, entry in decoder.items():
        try:
            tid = int(key)
            by_id[tid] = AddedToken(tid, str(entry["content"]), bool(entry.get("special")),
                                    bool(entry.get("normalized", False)))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"malformed added_tokens_decoder entry {key!r}", cfg_path) from None
    extra = src / "added_tokens.json"
    if extra.is_file():  # transformers adds these too; tokens it lists only here are not special
        for content, tid in load_json(extra).items():
            if not isinstance(tid, int):
                raise CheckpointError(f"added token {content!r} has a non-integer id", extra)
            known = by_id.get(tid)
            if known is not None and known.content != content:
                raise CheckpointError(f"added token id {tid} is {content!r} here but {known.content!r} in "
                                      "tokenizer_config.json", extra)
            by_id.setdefault(tid, AddedToken(tid, content, False, False))
    return BpeSource(vocab, [by_id[i] for i in sorted(by_id)], PRE_BY_REGEX[regex], form, "slow")
