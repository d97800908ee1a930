"""Our GGUFs equal llama.cpp's own converter's, tensor by tensor and key by key.

MiniCPM-V 4.6 (the one MiniCPM-V layout convert_hf_to_gguf.py registers): the tiny
fixtures and the real-layout checkpoint, text (--no-mtp) and --mmproj. 2.6 and 4.5:
the vocabulary, against convert_hf_to_gguf.py --vocab-only on a Qwen2/Qwen3 folder
with the same tokenizer files. Every key that differs must be listed, with its
reason, in docs/llama-converter-parity.md.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from minicpmv_edge.errors import GGUFError
from tests.llama_converter import convert_hf_to_gguf

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "llama-converter-parity.md"


def documented_keys() -> set[str]:
    rows = re.findall(r"^\| `([^`]+)` \|", DOC.read_text(encoding="utf-8"), flags=re.M)
    assert rows, "docs/llama-converter-parity.md has no key table"
    return set(rows)


def dump(path) -> tuple[dict, dict]:
    r = GGUFReader(str(path))
    kv = {k: (tuple(int(t) for t in f.types), f.contents()) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (int(t.tensor_type), tuple(int(x) for x in t.shape), t.data) for t in r.tensors}
    return kv, tensors


def compare(ours, theirs) -> dict:
    a_kv, a_t = dump(ours)
    b_kv, b_t = dump(theirs)
    tensor_problems = [n for n in sorted(set(a_t) | set(b_t))
                       if n not in a_t or n not in b_t or a_t[n][:2] != b_t[n][:2]
                       or not np.array_equal(np.asarray(a_t[n][2]).view(np.uint8), np.asarray(b_t[n][2]).view(np.uint8))]
    return {"only_ours": set(a_kv) - set(b_kv), "only_theirs": set(b_kv) - set(a_kv),
            "differ": {k for k in set(a_kv) & set(b_kv) if a_kv[k] != b_kv[k]},
            "tensors": tensor_problems, "n_tensors": len(a_t), "kv": (a_kv, b_kv)}


def assert_same(ours, theirs, what: str) -> dict:
    c = compare(ours, theirs)
    assert c["n_tensors"] > 0 and not c["tensors"], f"{what}: tensors differ: {c['tensors'][:5]}"
    assert all(k.startswith("minicpmv_edge.") for k in c["only_ours"]), (what, sorted(c["only_ours"]))
    undocumented = (c["only_theirs"] | c["differ"]) - documented_keys()
    assert not undocumented, f"{what}: keys differ from llama.cpp's converter but are not in {DOC.name}: " + \
        ", ".join(f"{k}: ours {c['kv'][0].get(k, ('-', None))[1]!r} theirs {c['kv'][1].get(k, ('-', None))[1]!r}"
                  for k in sorted(undocumented))
    return c


@pytest.mark.parametrize("source", ["minicpmv-4.6", "real-4.6"])
def test_46_pair_equals_llama_cpp_converter(store, source):
    ours = store.converted_real("4.6") if source == "real-4.6" else store.converted(source)
    text, mmproj = store.llama_pair(source)
    t = assert_same(ours.text_path, text, f"{source} text")
    m = assert_same(ours.mmproj_path, mmproj, f"{source} mmproj")
    assert t["n_tensors"] == len(GGUFReader(str(text)).tensors) and m["n_tensors"] == len(GGUFReader(str(mmproj)).tensors)
    kv = t["kv"][0]
    # the keys the issue names, written by both with the same types and values
    for key in ("general.sampling.temp", "general.sampling.top_p", "general.sampling.top_k", "tokenizer.ggml.pre",
                "tokenizer.ggml.token_type", "tokenizer.chat_template", "qwen35.block_count"):
        assert key in kv and key not in t["differ"], key
    if source == "real-4.6":
        assert kv["qwen35.block_count"][1] == 4 and kv["qwen35.attention.recurrent_layers"][1] == [True] * 3 + [False]


def test_46_4x_mmproj_equals_llama_cpp_converter(store, tmp_path):
    ours = store.converted("minicpmv-4.6-4x")
    theirs = convert_hf_to_gguf(store.checkpoint("minicpmv-4.6-4x"), tmp_path / "mm.gguf", "--outtype", "f16", "--mmproj")
    c = assert_same(ours.mmproj_path, theirs, "4x mmproj")
    assert c["kv"][0]["clip.vision.projector.scale_factor"][1] == 2
    assert not any(n.startswith("v.vit_merger.") for n in dump(theirs)[1])


def test_46_llama_default_run_declares_the_missing_mtp_layer(store, tmp_path):
    """Without --no-mtp, llama.cpp's converter adds the MTP block the config declares although the
    checkpoint has no MTP tensors; llama.cpp cannot load that file. Ours has only real layers."""
    from minicpmv_edge.edge_runtime.engine import Model

    theirs = convert_hf_to_gguf(store.checkpoint("minicpmv-4.6"), tmp_path / "t.gguf", "--outtype", "f16")
    kv, _ = dump(theirs)
    ours_kv, _ = dump(store.converted("minicpmv-4.6").text_path)
    assert kv["qwen35.block_count"][1] == ours_kv["qwen35.block_count"][1] + 1
    assert kv["qwen35.nextn_predict_layers"][1] == 1 and "qwen35.nextn_predict_layers" not in ours_kv
    with pytest.raises(GGUFError):
        Model(str(theirs))
    Model(str(store.converted("minicpmv-4.6").text_path)).close()


def qwen_text_folder(ckpt: Path, out: Path, arch: str) -> Path:
    """The folder llama.cpp's legacy minicpmv-surgery.py leaves for convert_hf_to_gguf.py: the text
    config as a plain Qwen causal LM and the tokenizer files (its class named so that transformers
    loads it without the checkpoint's remote code: MiniCPMVTokenizerFast extends Qwen2TokenizerFast)."""
    out.mkdir(parents=True)
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json",
              "generation_config.json"):
        if (ckpt / f).exists():
            shutil.copy(ckpt / f, out / f)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("auto_map", "vision_config", "slice_config")}
    cfg.update(architectures=[arch], model_type={"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}[arch])
    (out / "config.json").write_text(json.dumps(cfg))
    tcfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    tcfg.pop("auto_map", None)
    tcfg["tokenizer_class"] = "Qwen2Tokenizer"
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg))
    return out


TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                  "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token",
                  "tokenizer.ggml.add_eos_token", "tokenizer.chat_template")


@pytest.mark.parametrize("family,form,arch", [("minicpmv-4.5", "slow", "Qwen3ForCausalLM"),
                                              ("minicpmv-4.5", "json", "Qwen3ForCausalLM"),
                                              ("minicpmv-2.6", "json", "Qwen2ForCausalLM")])
def test_vocabulary_equals_llama_cpp_converter(store, tmp_path, family, form, arch):
    from minicpmv_edge.convert import convert
    from minicpmv_edge.fixtures import make_checkpoint

    if family == "minicpmv-4.5" and form == "json":
        ckpt = make_checkpoint(family, tmp_path / "ckpt", tokenizer="json")
        ours = convert(ckpt, tmp_path / "ours").text_path
    else:  # the fixture as the real checkpoint ships it (4.5: slow files; 2.6: both)
        ckpt, ours = store.checkpoint(family), store.converted(family).text_path
    theirs = convert_hf_to_gguf(qwen_text_folder(ckpt, tmp_path / "qwen", arch), tmp_path / "v.gguf", "--vocab-only")
    a, _ = dump(ours)
    b, _ = dump(theirs)
    differ = [k for k in TOKENIZER_KEYS if a.get(k) != b.get(k)]
    if form == "slow":
        # without tokenizer.json llama.cpp's gguf-py cannot resolve token names: BOS comes from config.json's
        # bos_token_id, PAD and UNK are not written at all (docs/llama-converter-parity.md)
        assert differ == ["tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id",
                          "tokenizer.ggml.bos_token_id"]
        assert b["tokenizer.ggml.bos_token_id"][1] == json.loads((ckpt / "config.json").read_text())["bos_token_id"]
        assert "tokenizer.ggml.padding_token_id" not in b and "tokenizer.ggml.unknown_token_id" not in b
        vocab = a["tokenizer.ggml.tokens"][1]
        assert vocab[a["tokenizer.ggml.padding_token_id"][1]] == "<|endoftext|>"
        assert vocab[a["tokenizer.ggml.unknown_token_id"][1]] == "<unk>"
    else:
        assert differ == []
    types = dict(zip(a["tokenizer.ggml.tokens"][1], a["tokenizer.ggml.token_type"][1]))
    CONTROL, USER_DEFINED = 3, 4
    assert types["<|im_end|>"] == CONTROL and types["<unk>"] == CONTROL and types["<image>"] == CONTROL
    if family == "minicpmv-4.5":  # not special, but llama.cpp's converter makes <|...|> CONTROL
        assert [types[t] for t in ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                                   "<|repo_name|>", "<|file_sep|>")] == [CONTROL] * 6
        assert types["<think>"] == types["</think>"] == types["<tool_call>"] == USER_DEFINED
