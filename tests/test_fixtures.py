"""Checks that minicpmv_edge.fixtures writes loadable, faithful tiny checkpoints."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

import torch

from minicpmv_edge.fixtures import FAMILIES, make_checkpoint  # noqa: E402
from minicpmv_edge.fixtures.corpus import CORPUS  # noqa: E402

MM = ["<image>", "</image>", "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>",
      "<point>", "</point>", "<slice>", "</slice>", "<image_id>", "</image_id>"]
SPECIALS = {
    "minicpmv-2.6": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *MM, "<unk>"],
    "minicpmv-4.0": ["<|im_start|>", "<|im_end|>", *MM],
    "minicpmv-4.5": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *MM, "<unk>", "<think>", "</think>"],
    "minicpmv-4.6": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *MM, "<unk>", "<think>", "</think>",
                     "<|image_pad|>", "<|video_pad|>"],
}
SPECIALS["minicpmv-4.6-4x"] = SPECIALS["minicpmv-4.6"]
for _f in ("minicpmv-4.7", "minicpmv-4.7-4x", "minicpmv-4.7-moe", "minicpm-ocr-1.0"):  # 4.6's tokenizer
    SPECIALS[_f] = SPECIALS["minicpmv-4.6"]
TEXTS = CORPUS + ["e\u0301t\u00e9 n\u0303", "q\u0301uick \u0915\u093f\u0924\u093e\u092c", " leading space", "x  <image>y</image>\n\n<|im_end|>"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixtures")
    # One sharded family, the rest single-file: both layouts get covered.
    return {f: make_checkpoint(f, root / f, shards=3 if f == "minicpmv-4.5" else 1) for f in FAMILIES}


def _hf_tokenizer(d: Path):
    from transformers import AutoTokenizer, PreTrainedConfig

    # Real 2.6/4.0/4.5 config.json files carry remote-code auto_map; transformers 5.23's AutoTokenizer
    # then falls back to PreTrainedConfig, which crashes on 4.0's longrope rope_scaling. Handing it a
    # neutral config makes it pick the class from tokenizer_config.json, as it does for 4.6.
    return AutoTokenizer.from_pretrained(str(d), trust_remote_code=False, config=PreTrainedConfig())


def _weights(d: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_files_and_tokenizer(ckpts, family):
    from tokenizers import Tokenizer

    d = ckpts[family]
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json"):
        assert (d / name).is_file(), name
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    assert "chat_template" in tcfg
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    hf = _hf_tokenizer(d)
    assert len(hf) == raw.get_vocab_size(with_added_tokens=True)
    for tok in SPECIALS[family]:
        tid = raw.token_to_id(tok)
        assert tid is not None and tid >= 3, tok
        assert raw.encode(tok, add_special_tokens=False).ids == [tid], tok
        assert hf.encode(tok, add_special_tokens=False) == [tid], tok
        assert raw.encode(f"ab{tok}cd", add_special_tokens=False).ids.count(tid) == 1, tok
    for text in TEXTS:
        ids = raw.encode(text, add_special_tokens=False).ids
        assert hf.encode(text, add_special_tokens=False) == ids, text
        if family != "minicpmv-4.0":  # NFC normalizer: decode gives the composed form
            assert hf.decode(ids) == unicodedata.normalize("NFC", text), text
    assert hf.eos_token == "<|im_end|>"
    cfg = json.loads((d / "config.json").read_text())
    vocab = cfg.get("vocab_size") or cfg["text_config"]["vocab_size"]
    assert vocab % 64 == 0 and vocab > len(hf)


def test_sentencepiece_40(ckpts):
    import sentencepiece as spm

    d = ckpts["minicpmv-4.0"]
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    assert (sp.id_to_piece(0), sp.id_to_piece(1), sp.id_to_piece(2)) == ("<unk>", "<s>", "</s>")
    hf = _hf_tokenizer(d)
    assert hf.bos_token_id == 1 and hf.convert_tokens_to_ids("<|im_start|>") == sp.get_piece_size()
    for text in CORPUS:  # HF Metaspace(prepend_scheme="first") differs from SPM only on leading spaces
        if not text.startswith(" "):
            assert hf.encode(text, add_special_tokens=False) == sp.encode(text), text
            assert hf.decode(sp.encode(text)) == text, text
    assert sp.decode(sp.encode("🐱 猫")) == "🐱 猫"  # byte fallback
    assert (d / "special_tokens_map.json").is_file()


def test_chat_templates(ckpts):
    msgs = [{"role": "user", "content": "hi"}]
    t26 = _hf_tokenizer(ckpts["minicpmv-2.6"])
    assert t26.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    t45 = _hf_tokenizer(ckpts["minicpmv-4.5"])
    base = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    render = lambda t, **kw: t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)  # noqa
    assert render(t45) == base
    assert render(t45, enable_thinking=False) == base + "<think>\n\n</think>\n\n"
    assert render(t45, enable_thinking=True) == base + "<think>\n"
    t46 = _hf_tokenizer(ckpts["minicpmv-4.6"])
    assert render(t46) == base + "<think>\n"
    assert render(t46, enable_thinking=False) == base + "<think>\n\n</think>\n\n"
    assert t46.image_token == "<|image_pad|>" and t46.slice_start_token == "<slice>"
    assert (ckpts["minicpmv-4.6"] / "chat_template.jinja").is_file()


@pytest.mark.parametrize("family", ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5"])
def test_minicpmv_weights_load(ckpts, family):
    from minicpmv_edge.fixtures.build import build_text_model
    from minicpmv_edge.fixtures.towers import Resampler, siglip_vision

    d = ckpts[family]
    cfg = json.loads((d / "config.json").read_text())
    sd = _weights(d)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    assert sd["vpm.embeddings.position_embedding.weight"].shape == (4900, 64)
    assert sd["resampler.proj"].shape == (128, 128) and sd["resampler.query"].shape == (64, 128)
    assert not any(k.startswith("vpm.head.") for k in sd)
    ln = sd["llm.model.norm.weight"].float()
    assert 0.02 < ln.std() < 0.5 and abs(ln.mean() - 1) < 0.1  # ~1 + noise, not all-ones
    assert sd["vpm.post_layernorm.bias"].float().abs().max() > 0

    def part(prefix):
        return {k[len(prefix):]: v.float() for k, v in sd.items() if k.startswith(prefix)}

    llm = build_text_model(family, cfg).float()
    llm.load_state_dict(part("llm."), strict=True)
    vpm = siglip_vision(cfg["vision_config"]).float()
    vpm.load_state_dict(part("vpm."), strict=True)
    res = Resampler(cfg["query_num"], cfg["hidden_size"], cfg["vision_config"]["hidden_size"])
    res.load_state_dict(part("resampler."), strict=True)
    assert llm.lm_head.weight.shape[0] == cfg["vocab_size"]
    with torch.no_grad():
        logits = llm(torch.tensor([[1, 5, 9, 200, 3]])).logits
        assert torch.isfinite(logits).all() and logits.std() > 0.1
        h = vpm(pixel_values=torch.rand(1, 3, 56, 56) * 2 - 1, interpolate_pos_encoding=True).last_hidden_state
        assert h.shape == (1, 16, 64) and torch.isfinite(h).all()
        kv = res.ln_kv(res.kv_proj(h)).transpose(0, 1)
        q = res.ln_q(res.query).unsqueeze(1)
        out = res.ln_post(res.attn(q, kv, kv)[0].transpose(0, 1)) @ res.proj
        assert out.shape == (1, 64, 128) and 0.1 < out.std() < 10


@pytest.mark.parametrize("family", ["minicpmv-4.6", "minicpmv-4.6-4x"])
def test_minicpmv46_from_pretrained(ckpts, family):
    from transformers import AutoImageProcessor, MiniCPMV4_6ForConditionalGeneration

    d = ckpts[family]
    mode = "4x" if family.endswith("4x") else "16x"
    assert json.loads((d / "preprocessor_config.json").read_text())["downsample_mode"] == mode
    assert AutoImageProcessor.from_pretrained(str(d)).downsample_mode == mode
    model = MiniCPMV4_6ForConditionalGeneration.from_pretrained(str(d), dtype=torch.float32).eval()
    cfg = model.config
    raw = json.loads((d / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in raw["added_tokens"]}
    assert cfg.image_token_id == added["<|image_pad|>"] and cfg.video_token_id == added["<|video_pad|>"]
    sd = _weights(d)
    assert "model.language_model.layers.0.linear_attn.A_log" in sd
    assert sd["model.language_model.norm.weight"].float().abs().mean() < 0.5  # (1 + w) offsets
    with torch.no_grad():
        # one 112x112 image -> 8x8 patches -> 4 tokens (16x) or 16 tokens (4x)
        pix = torch.rand(1, 3, 14, 64 * 14) * 2 - 1
        feats = model.model.get_image_features(pix, torch.tensor([[8, 8]], dtype=torch.int32))
        n = (8 * 8) // (4 if mode == "4x" else 16)
        out = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        assert out[0].shape == (n, 128)
        ids = torch.tensor([[added["<|im_start|>"], 5, 6, added["<image>"]] + [cfg.image_token_id] * n
                            + [added["</image>"], 7]])
        logits = model(input_ids=ids, pixel_values=pix, target_sizes=torch.tensor([[8, 8]])).logits
        assert torch.isfinite(logits).all()


def test_deterministic_and_sharded(tmp_path):
    a = make_checkpoint("minicpmv-2.6", tmp_path / "a", seed=3)
    b = make_checkpoint("minicpmv-2.6", tmp_path / "b", seed=3, shards=2)
    c = make_checkpoint("minicpmv-2.6", tmp_path / "c", seed=4)
    for name in ("tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["llm.lm_head.weight"], wc["llm.lm_head.weight"])
    idx = json.loads((b / "model.safetensors.index.json").read_text())
    assert set(idx["weight_map"]) == set(wb)
    assert sorted(set(idx["weight_map"].values())) == ["model-00001-of-00002.safetensors",
                                                       "model-00002-of-00002.safetensors"]
    assert idx["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in wb.values())
    assert not (b / "model.safetensors").exists()


def test_sentencepiece_deterministic(tmp_path):
    a = make_checkpoint("minicpmv-4.0", tmp_path / "a")
    b = make_checkpoint("minicpmv-4.0", tmp_path / "b")
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
