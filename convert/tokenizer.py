"""Source tokenizer (tokenizer.json, or tokenizer.model for SentencePiece) -> GGUF vocab.

gguf's SpecialVocab handles merges, special ids, add-bos/eos flags and the chat
template. What it does not do, and llama.cpp's converter does, is written here:
the token list and types, padding the vocab to the embedding rows (llama.cpp
sizes token_embd as {n_embd, n_vocab}), and the pre-tokenizer name. llama.cpp
picks that name by hashing a probe string's tokens; we read the split regex
from tokenizer.json instead and match it against the regexes llama.cpp ships
(src/llama-vocab.cpp), so an unknown tokenizer is refused, not mis-tokenized.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFWriter, TokenType
from gguf.vocab import SpecialVocab

from minicpmv_edge.errors import CheckpointError, UnsupportedModelError

# tokenizer.json split regex -> llama.cpp tokenizer.ggml.pre
KNOWN_PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen35",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
}

# mtmd finds these by text (mtmd.cpp:1060-1073); a missing one is silently -1
REQUIRED_MEDIA_TOKENS = ("<image>", "</image>", "<slice>", "</slice>")


@dataclass
class VocabInfo:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    n_real: int  # tokens before padding
    add_space_prefix: bool = True  # SentencePiece only


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


def read_vocab(src: Path, n_rows: int) -> VocabInfo:
    """Read the tokenizer in `src` and pad it to `n_rows` (the embedding rows)."""
    tj_path = src / "tokenizer.json"
    if (src / "tokenizer.model").exists():
        info = _read_spm(src)
    elif tj_path.exists():
        info = _read_bpe(tj_path)
    else:
        raise CheckpointError("no tokenizer.json or tokenizer.model", src)
    if len(info.tokens) > n_rows:
        raise CheckpointError(f"tokenizer has {len(info.tokens)} tokens but the embedding has only {n_rows} rows", src)
    present = set(info.tokens)
    missing = [t for t in REQUIRED_MEDIA_TOKENS if t not in present]
    if missing:
        raise CheckpointError(f"tokenizer lacks the media tokens {missing} that llama.cpp's mtmd inserts", src)
    info.n_real = len(info.tokens)
    for i in range(len(info.tokens), n_rows):
        info.tokens.append(f"[PAD{i}]")
        info.types.append(TokenType.UNUSED)
        if info.scores is not None:
            info.scores.append(-1000.0)
    return info


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read JSON ({exc})", path) from None


def _read_bpe(path: Path) -> VocabInfo:
    tj = _load_json(path)
    model = tj.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UnsupportedModelError("tokenizer.json is not a byte-level BPE (nor is there a tokenizer.model)", path)
    regex = _split_regex(tj.get("pre_tokenizer"))
    pre = KNOWN_PRE_TOKENIZERS.get(regex or "")
    if pre is None:
        raise UnsupportedModelError(
            f"unknown pre-tokenizer regex {regex!r}; supported: {sorted(set(KNOWN_PRE_TOKENIZERS.values()))}", path)
    by_id: dict[int, tuple[str, int]] = {i: (t, TokenType.NORMAL) for t, i in model["vocab"].items()}
    for at in tj.get("added_tokens", []):
        by_id[at["id"]] = (at["content"], TokenType.CONTROL if at.get("special") else TokenType.USER_DEFINED)
    return _dense(by_id, path, model_name="gpt2", pre=pre, scores=None)


def _dense(by_id: dict[int, tuple[str, int]], path: Path, model_name: str, pre, scores) -> VocabInfo:
    n = max(by_id) + 1
    tokens, types = [], []
    for i in range(n):
        tok, typ = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(tok)
        types.append(typ)
    return VocabInfo(model_name, pre, tokens, types, scores, n)


def _read_spm(src: Path) -> VocabInfo:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(src / "tokenizer.model"))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load SentencePiece model ({exc})", src / "tokenizer.model") from None
    by_id: dict[int, tuple[str, int]] = {}
    scores: dict[int, float] = {}
    for i in range(sp.vocab_size()):
        typ = TokenType.NORMAL
        if sp.IsUnknown(i):
            typ = TokenType.UNKNOWN
        elif sp.IsControl(i):
            typ = TokenType.CONTROL
        elif sp.IsUnused(i):
            typ = TokenType.UNUSED
        elif sp.IsByte(i):
            typ = TokenType.BYTE
        by_id[i] = (sp.IdToPiece(i), typ)
        scores[i] = sp.GetScore(i)
    tj_path = src / "tokenizer.json"
    added = _load_json(tj_path).get("added_tokens", []) if tj_path.exists() else []
    for at in added:
        typ = TokenType.CONTROL if at.get("special") else TokenType.USER_DEFINED
        if at["id"] < sp.vocab_size() and by_id[at["id"]][0] != at["content"]:
            raise CheckpointError(f"added token {at['content']!r} collides with SentencePiece id {at['id']}", tj_path)
        if at["id"] >= sp.vocab_size() or by_id[at["id"]][1] == TokenType.NORMAL:
            by_id[at["id"]] = (at["content"], typ)
        scores.setdefault(at["id"], -1000.0)
    info = _dense(by_id, src, model_name="llama", pre=None, scores=None)
    info.scores = [scores.get(i, -1000.0) for i in range(len(info.tokens))]
    info.add_space_prefix = _spm_space_prefix(_load_json(tj_path) if tj_path.exists() else {})
    return info


def _spm_space_prefix(tj: dict) -> bool:
    """llama.cpp's SPM tokenizer prefixes a space to the text and to every fragment after
    a special token (add_space_prefix); HF's Metaspace(prepend_scheme="first") prefixes
    only the start of the input. Chat prompts always start with a special token, so for
    "first" the faithful choice is no prefix at all; legacy tokenizers (Prepend normaliser
    or prepend_scheme "always") prefix every fragment, as llama.cpp does."""
    def walk(node):
        if isinstance(node, dict):
            yield node
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    for node in walk(tj.get("normalizer")):
        if node.get("type") == "Prepend":
            return True
    for node in walk(tj.get("pre_tokenizer")):
        if node.get("type") == "Metaspace":
            return node.get("prepend_scheme", "always") == "always"
    return True


def add_vocab(w: GGUFWriter, src: Path, info: VocabInfo) -> None:
    w.add_tokenizer_model(info.model)
    if info.pre:
        w.add_tokenizer_pre(info.pre)
    w.add_token_list(info.tokens)
    w.add_token_types(info.types)
    if info.scores is not None:
        w.add_token_scores(info.scores)
    special = SpecialVocab(src, load_merges=info.model == "gpt2", n_vocab=len(info.tokens))
    special.add_to_gguf(w, quiet=True)
    if info.model == "llama":
        w.add_add_space_prefix(info.add_space_prefix)


def chat_template(src: Path) -> str | None:
    sv = SpecialVocab(src, load_merges=False)
    return sv.chat_template if isinstance(sv.chat_template, str) else None
