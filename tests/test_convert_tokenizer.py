"""Conversion of the real tokenizers: either file form, token types, sampling defaults, normalizer.

The same tokenizer shipped as tokenizer.json or as the slow files (vocab.json +
merges.txt + tokenizer_config.json) gives the same GGUF vocabulary; token types
follow llama.cpp's converter (tests/test_llama_parity.py compares with it);
generation_config.json becomes general.sampling.* with llama.cpp's names and
types, in both files; the source's Unicode normalizer is recorded.
"""

from __future__ import annotations

import json
import shutil

import pytest
from gguf import GGUFReader

from minicpmv_edge import schema
from minicpmv_edge.convert import convert
from minicpmv_edge.errors import CheckpointError, UnsupportedModelError
from minicpmv_edge.fixtures import make_checkpoint

STRING, INT32, FLOAT32 = 8, 5, 6  # GGUF value types
VOCAB_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
              "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
              "tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token",
              "tokenizer.ggml.add_eos_token", "tokenizer.chat_template", schema.EDGE_TOKENIZER_NORMALIZER)


def kv(path) -> dict:
    r = GGUFReader(str(path))
    return {k: (tuple(int(t) for t in f.types), f.contents()) for k, f in r.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("family,other", [("minicpmv-4.5", "json"), ("minicpmv-4.5", "both"),
                                          ("minicpmv-2.6", "slow"), ("minicpmv-2.6", "json")])
def test_either_file_form_gives_the_same_vocabulary(store, tmp_path, family, other):
    ckpt = make_checkpoint(family, tmp_path / "ckpt", tokenizer=other)
    assert (ckpt / "tokenizer.json").exists() == (other != "slow")
    a = kv(store.converted(family).text_path)
    b = kv(convert(ckpt, tmp_path / "out").text_path)
    assert [k for k in VOCAB_KEYS if a.get(k) != b.get(k) and "add_" not in k] == []
    # the add-BOS/EOS flags are written where llama.cpp's converter writes them, which depends on the
    # file form (tokenizer.json's ByteLevel post-processor says false; the slow files say nothing);
    # what llama.cpp does with them is the same: an absent flag is false for a BPE vocabulary
    for k in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"):
        assert a.get(k, (None, False))[1] is False and b.get(k, (None, False))[1] is False, k
    assert a[schema.EDGE_TOKENIZER_NORMALIZER][1] == "NFC"
    assert len(a["tokenizer.ggml.tokens"][1]) == {"minicpmv-4.5": 151748, "minicpmv-2.6": 151666}[family]


def test_real_45_ids_and_types(store):
    a = kv(store.converted("minicpmv-4.5").text_path)
    toks, types = a["tokenizer.ggml.tokens"][1], a["tokenizer.ggml.token_type"][1]
    assert toks[128244] == "<unk>" and a["tokenizer.ggml.unknown_token_id"][1] == 128244
    assert a["tokenizer.ggml.eos_token_id"][1] == 151645 and a["tokenizer.ggml.padding_token_id"][1] == 151643
    assert a["tokenizer.ggml.add_bos_token"][1] is False and "tokenizer.ggml.add_eos_token" not in a  # as llama.cpp
    NORMAL, CONTROL, USER_DEFINED = 1, 3, 4
    assert types[128244] == CONTROL and types[128243] == NORMAL
    assert types[151659:151665] == [CONTROL] * 6  # <|fim_prefix|>..<|file_sep|>: special false but <|...|>
    assert types[151667:151669] == [USER_DEFINED] * 2 and types[151657] == USER_DEFINED  # <think>, <tool_call>
    assert types[151685:] == [CONTROL] * 63  # <|reserved_N|>
    assert a["tokenizer.chat_template"][1] == json.loads(
        (store.checkpoint("minicpmv-4.5") / "tokenizer_config.json").read_text())["chat_template"]


def test_no_control_looking_added_token_warnings(store, caplog):
    """llama.cpp warns at load about added tokens that look like control tokens but are not
    CONTROL; our files have none (the only warnings left are for base BPE pieces such as
    '</s>', which llama.cpp's converter leaves NORMAL too)."""
    import logging

    from minicpmv_edge.edge_runtime.engine import Model

    for family in ("minicpmv-4.5", "minicpmv-4.6"):
        res = store.converted(family)
        with caplog.at_level(logging.DEBUG, logger="minicpmv_edge.edge_runtime.engine"):
            caplog.clear()
            Model(str(res.text_path), vocab_only=True).close()
        warned = [r.getMessage() for r in caplog.records if "control-looking token" in r.getMessage()]
        ids = [int(m.split("token: ")[1].split()[0]) for m in warned]
        assert all(i < {"minicpmv-4.5": 151643, "minicpmv-4.6": 248044}[family] for i in ids), warned


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_sampling_defaults_from_generation_config(store, family):
    res = store.converted(family)
    gen = json.loads((store.checkpoint(family) / "generation_config.json").read_text())
    want = {"general.sampling.temp": ((FLOAT32,), gen["temperature"]), "general.sampling.top_k": ((INT32,), gen["top_k"]),
            "general.sampling.top_p": ((FLOAT32,), gen["top_p"])}
    if "repetition_penalty" in gen:
        want["general.sampling.penalty_repeat"] = ((FLOAT32,), gen["repetition_penalty"])
    for path in (res.text_path, res.mmproj_path):  # llama.cpp's converter writes them into both
        got = {k: v for k, v in kv(path).items() if k.startswith("general.sampling.")}
        assert set(got) == set(want)
        for k, (types, value) in want.items():
            assert got[k][0] == types and got[k][1] == pytest.approx(value, rel=1e-7), k


def test_bad_generation_config_is_refused_before_writing(store, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(store.checkpoint("minicpmv-4.5"), src)
    (src / "generation_config.json").write_text(json.dumps({"top_k": "twenty", "temperature": 0.6}))
    with pytest.raises(CheckpointError, match=r"generation_config.json: field 'top_k' is 'twenty'"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before the output folder is made


def test_tokenizer_problems_are_refused(store, tmp_path):
    base = store.checkpoint("minicpmv-4.5")
    src = tmp_path / "slow"
    shutil.copytree(base, src)
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "GPT2Tokenizer"}))
    with pytest.raises(UnsupportedModelError, match="tokenizer_class 'GPT2Tokenizer' with only vocab.json"):
        convert(src, tmp_path / "o1")
    for f in ("vocab.json", "merges.txt"):
        (src / f).unlink()
    with pytest.raises(CheckpointError, match="no tokenizer: expected tokenizer.json, vocab.json"):
        convert(src, tmp_path / "o2")
    src46 = tmp_path / "46"
    shutil.copytree(store.checkpoint("minicpmv-4.6"), src46)
    tj = json.loads((src46 / "tokenizer.json").read_text())
    tj["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}
    (src46 / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UnsupportedModelError, match="tokenizer normalizer 'Lowercase' is not supported"):
        convert(src46, tmp_path / "o3")
    # a 4.6 folder with only slow files: transformers cannot read it either (Qwen3_5Tokenizer
    # declares no vocab files), so it is refused by name
    (src46 / "tokenizer.json").unlink()
    (src46 / "vocab.json").write_text(json.dumps(tj["model"]["vocab"]))
    (src46 / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(UnsupportedModelError, match="tokenizer_class None with only vocab.json"):
        convert(src46, tmp_path / "o4")


def test_40_reconstruction_records_no_normalizer(store):
    a = kv(store.converted("minicpmv-4.0").text_path)
    assert a[schema.EDGE_TOKENIZER_NORMALIZER] == ((STRING,), "")
