"""config.json and tokenizer.json checked before any family module reads them.

Family modules read values with `int(cfg["hidden_size"])` and build per-layer lists from
`num_hidden_layers`; a checkpoint with `"hidden_size": "one hundred"`, `null` heads,
`full_attention_interval: 0` or `num_hidden_layers: 1e9` must become one line naming the
file and the field, not a traceback or a billion-entry list. So every shape value a
MiniCPM-V config may carry is checked here for type and a sane range, wherever it sits
(top level, `text_config`, `vision_config`, `llm_config`); unknown keys pass untouched.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from minicpmv_edge.errors import CheckpointError

# key -> (min, max): positive-integer shape fields; the maxima are far above any real model
# (Qwen3-235B: 94 layers, hidden 4096, vocab 151936) and far below what would exhaust memory
INTS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, 1 << 16), "intermediate_size": (1, 1 << 20), "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1024), "num_key_value_heads": (1, 1024), "head_dim": (1, 4096),
    "vocab_size": (1, 1 << 23), "max_position_embeddings": (1, 1 << 24), "image_size": (1, 1 << 14),
    "patch_size": (1, 1024), "query_num": (1, 1 << 14), "num_channels": (1, 16), "full_attention_interval": (1, 1024),
    "linear_num_key_heads": (1, 1024), "linear_num_value_heads": (1, 1024), "linear_key_head_dim": (1, 4096),
    "linear_value_head_dim": (1, 4096), "linear_conv_kernel_dim": (1, 64), "max_window_layers": (0, 1024),
    "insert_layer_id": (-1, 1024), "mtp_num_hidden_layers": (0, 64), "max_slice_nums": (1, 64),
    "scale_resolution": (1, 1 << 14), "group_size": (-1, 1 << 16), "bits": (1, 16),
}
# key -> (min, max), exclusive min: positive finite numbers
FLOATS: dict[str, tuple[float, float]] = {
    "rope_theta": (0.0, 1e12), "rms_norm_eps": (0.0, 1.0), "layer_norm_eps": (0.0, 1.0),
    "partial_rotary_factor": (0.0, 1.0),
}
BOOLS = ("tie_word_embeddings", "use_image_id", "slice_mode")
SECTIONS = ("text_config", "vision_config", "llm_config", "slice_config", "rope_parameters", "rope_scaling",
            "quantization_config", "audio_config")
_MAX_TOKENIZER_BYTES = 1 << 30


def check_config(cfg: dict, path: Path) -> None:
    """Raise CheckpointError naming `path` and the field for the first ill-typed or absurd value."""
    _check_section(cfg, "", path)
    for section in SECTIONS:
        sub = cfg.get(section)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise CheckpointError(f"{section} must be an object, got {_show(sub)}", path)
        _check_section(sub, section + ".", path)
        for inner in ("rope_parameters", "rope_scaling"):
            if isinstance(sub.get(inner), dict):
                _check_section(sub[inner], f"{section}.{inner}.", path)
    for key in ("architectures",):
        v = cfg.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise CheckpointError(f"{key} must be a list of strings, got {_show(v)}", path)
    if "model_type" in cfg and not isinstance(cfg["model_type"], str):
        raise CheckpointError(f"model_type must be a string, got {_show(cfg['model_type'])}", path)


def _check_section(d: dict, prefix: str, path: Path) -> None:
    for key, (lo, hi) in INTS.items():
        if key in d:
            v = d[key]
            # JSON writers sometimes emit 4096.0; an integral float is fine, 1e9 then fails the range
            if isinstance(v, float) and math.isfinite(v) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int):
                raise CheckpointError(f"{prefix}{key} must be an integer, got {_show(d[key])}", path)
            if not lo <= v <= hi:
                raise CheckpointError(f"{prefix}{key} = {v} is out of range ({lo}..{hi})", path)
    for key, (lo, hi) in FLOATS.items():
        if key in d:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo < v <= hi:
                raise CheckpointError(f"{prefix}{key} must be a number in ({lo:g}, {hi:g}], got {_show(v)}", path)
    for key in BOOLS:
        if key in d and not isinstance(d[key], bool):
            raise CheckpointError(f"{prefix}{key} must be true or false, got {_show(d[key])}", path)
    lt = d.get("layer_types")
    if lt is not None:
        if not isinstance(lt, list) or not all(isinstance(x, str) for x in lt):
            raise CheckpointError(f"{prefix}layer_types must be a list of strings", path)
        n = d.get("num_hidden_layers")
        if isinstance(n, int) and len(lt) != n:
            raise CheckpointError(f"{prefix}layer_types has {len(lt)} entries for {n} layers", path)


def check_tokenizer_json(src: Path) -> None:
    """tokenizer.json, when present: UTF-8 JSON with a `model` whose vocabulary is a token -> id map
    (BPE) or a list of [piece, score] (Unigram), and well-formed added tokens."""
    path = src / "tokenizer.json"
    if not path.is_file():
        return
    if path.stat().st_size > _MAX_TOKENIZER_BYTES:
        raise CheckpointError("is larger than 1 GiB; not a tokenizer", path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError("not UTF-8 text", path) from None
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError("not JSON", path) from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise CheckpointError("lacks the 'model' object", path)
    vocab = model.get("vocab")
    if model.get("type", "BPE") == "Unigram":
        if not isinstance(vocab, list) or not all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)
                                                  for x in vocab):
            raise CheckpointError("model.vocab must be a list of [piece, score] for a Unigram tokenizer", path)
    else:
        if not isinstance(vocab, dict) or not vocab:
            raise CheckpointError("model.vocab must be a non-empty object {token: id}", path)
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 23 for i in vocab.values()):
            raise CheckpointError("model.vocab ids must be integers in 0..8388607", path)
        merges = model.get("merges", [])
        if not isinstance(merges, list):
            raise CheckpointError("model.merges must be a list", path)
    added = data.get("added_tokens", [])
    if not isinstance(added, list) or not all(
            isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int)
            and not isinstance(t.get("id"), bool) and 0 <= t["id"] < 1 << 23 for t in added):
        raise CheckpointError("added_tokens must be a list of {id, content} objects", path)


def _show(v) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."
