"""Source tokenizer (tokenizer.json, slow vocab.json + merges.txt, or tokenizer.model) -> GGUF vocab.

gguf's SpecialVocab handles merges, add-bos/eos flags and the chat template.
What it does not do, and llama.cpp's converter does, is written here: the token
list and types, padding the vocab to the embedding rows (llama.cpp sizes
token_embd as {n_embd, n_vocab}), and the pre-tokenizer name. llama.cpp picks
that name by hashing a probe string's tokens; we read the split regex (or the
slow files' tokenizer class) instead and match it against the regexes llama.cpp
implements (src/llama-vocab.cpp), so an unknown tokenizer is refused, not
mis-tokenized. The source's Unicode normalizer (NFC for the Qwen tokenizers),
which llama.cpp does not apply, is recorded for the runtimes
(`minicpmv_edge.tokenizer.normalizer`, applied by minicpmv_edge.text_normalize).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFValueType, GGUFWriter, TokenType
from gguf.vocab import SpecialVocab

from minicpmv_edge import schema
from minicpmv_edge.errors import CheckpointError

from .bpe_files import BpeSource, has_bpe_files, read_bpe
from .json_files import load_json

# mtmd finds these by text (mtmd.cpp:1060-1073); a missing one is silently -1
REQUIRED_MEDIA_TOKENS = ("<image>", "</image>", "<slice>", "</slice>")
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")  # SpecialVocab's default set


@dataclass
class VocabInfo:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    n_real: int  # tokens before padding
    add_space_prefix: bool = True  # SentencePiece only
    normalizer: str = ""  # Unicode form the source tokenizer applies first ("" none)
    special_ids: dict[str, int] | None = None  # resolved from tokenizer_config.json (slow files)


def looks_special(token: str) -> bool:
    """llama.cpp's converter marks these added tokens CONTROL even when the tokenizer does not
    call them special (conversion/base.py does_token_look_special): `<|fim_prefix|>` etc."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def added_token_type(content: str, special: bool) -> int:
    """CONTROL or USER_DEFINED exactly as llama.cpp's converter decides (conversion/base.py get_vocab_base)."""
    return TokenType.CONTROL if special or looks_special(content) else TokenType.USER_DEFINED


def read_vocab(src: Path, n_rows: int) -> VocabInfo:
    """Read the tokenizer in `src` and pad it to `n_rows` (the embedding rows)."""
    if (src / "tokenizer.model").exists():
        info = _read_spm(src)
    elif has_bpe_files(src):
        info = _bpe_info(src, read_bpe(src))
    else:
        raise CheckpointError("no tokenizer: expected tokenizer.json, vocab.json + merges.txt, or tokenizer.model", src)
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


def _bpe_info(src: Path, bpe: BpeSource) -> VocabInfo:
    by_id: dict[int, tuple[str, int]] = {}
    for tok, i in bpe.vocab.items():
        if not isinstance(i, int) or i < 0:
            raise CheckpointError(f"token {tok!r} has id {i!r}", src)
        by_id[i] = (tok, TokenType.NORMAL)
    for at in bpe.added:
        content = at.content if at.special or looks_special(at.content) else at.content.replace("\u2581", " ")
        by_id[at.id] = (content, added_token_type(at.content, at.special))
    info = _dense(by_id, model_name="gpt2", pre=bpe.pre, scores=None)
    info.normalizer = bpe.normalizer
    if bpe.form == "slow":
        info.special_ids = _slow_special_ids(src, bpe)
    return info


def _slow_special_ids(src: Path, bpe: BpeSource) -> dict[str, int]:
    """SpecialVocab resolves tokenizer_config.json's `{bos,eos,...}_token` names through
    tokenizer.json's added tokens and only then falls back to config.json ids; without a
    tokenizer.json it skips the first step. Resolve them through the same added tokens
    (from tokenizer_config.json), so both forms give the same ids."""
    cfg = load_json(src / "tokenizer_config.json")
    ids = {}
    for typ in SPECIAL_TYPES:
        entry = cfg.get(f"{typ}_token")
        name = entry.get("content") if isinstance(entry, dict) else entry
        if isinstance(name, str):
            tid = next((a.id for a in bpe.added if a.content == name), None)
            if tid is not None:
                ids[typ] = tid
    return ids


def _dense(by_id: dict[int, tuple[str, int]], model_name: str, pre, scores) -> VocabInfo:
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
    added = load_json(tj_path).get("added_tokens", []) if tj_path.exists() else []
    for at in added:
        typ = TokenType.CONTROL if at.get("special") else TokenType.USER_DEFINED
        if at["id"] < sp.vocab_size() and by_id[at["id"]][0] != at["content"]:
            raise CheckpointError(f"added token {at['content']!r} collides with SentencePiece id {at['id']}", tj_path)
        if at["id"] >= sp.vocab_size() or by_id[at["id"]][1] == TokenType.NORMAL:
            by_id[at["id"]] = (at["content"], typ)
        scores.setdefault(at["id"], -1000.0)
    info = _dense(by_id, model_name="llama", pre=None, scores=None)
    info.scores = [scores.get(i, -1000.0) for i in range(len(info.tokens))]
    info.add_space_prefix = _spm_space_prefix(load_json(tj_path) if tj_path.exists() else {})
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
    if info.special_ids:
        special.special_token_ids.update(info.special_ids)
    if info.model == "gpt2":
        special.add_special_token.update(_byte_level_add_flags(src))
    special.add_to_gguf(w, quiet=True)
    if info.model == "llama":
        w.add_add_space_prefix(info.add_space_prefix)
    # add_string drops "" silently; "no normalization" is a fact too
    w.add_key_value(schema.EDGE_TOKENIZER_NORMALIZER, info.normalizer, GGUFValueType.STRING)


def _byte_level_add_flags(src: Path) -> dict[str, bool]:
    """llama.cpp's gguf-py (newer than the PyPI wheel, vocab.py) reads a ByteLevel
    post-processor in tokenizer.json as "adds neither BOS nor EOS" and writes both flags
    false, over tokenizer_config.json. Without one (the slow files, or the
    TemplateProcessing transformers saves) only tokenizer_config.json's add_* count."""
    tj_path = src / "tokenizer.json"
    if not tj_path.is_file():
        return {}
    pp = load_json(tj_path).get("post_processor") or {}
    procs = pp.get("processors", [pp]) if isinstance(pp, dict) else []
    if any(isinstance(p, dict) and p.get("type") == "ByteLevel" for p in procs):
        return {"bos": False, "eos": False}
    return {}


def chat_template(src: Path) -> str | None:
    sv = SpecialVocab(src, load_merges=False)
    return sv.chat_template if isinstance(sv.chat_template, str) else None
