"""Real-layout checkpoints (real config, tokenizer, tensor names/shapes/dtype/sharding; random
weights) are what the reference files describe, and `convert` turns them into a valid pair.

They are built once per session (conftest `store.real_layout`), gigabytes each, and deleted at
the end. tests/test_llama_parity.py compares the 4.6 conversion with llama.cpp's converter.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from minicpmv_edge.fixtures.real_layout import DEFAULT_LAYERS, keep, shapes_45
from minicpmv_edge.fixtures.sources import real_dir
from minicpmv_edge.gguf_info import check_pair


def fields(path, keys) -> dict:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    return {k: r.fields[k].contents() if k in r.fields else None for k in keys}


def safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return {k: v for k, v in json.loads(f.read(n)).items() if k != "__metadata__"}


def test_45_shapes_from_config_add_up_to_the_real_index():
    """4.5's index has names, not shapes: the config-derived shapes of all 849 tensors, in BF16,
    must be exactly the index's total_size."""
    real_cfg = json.loads((real_dir("4.5") / "config.json").read_text())
    index = json.loads((real_dir("4.5") / "model.safetensors.index.json").read_text())
    shapes = shapes_45(real_cfg)
    assert set(shapes) == set(index["weight_map"]) and len(shapes) == 849
    assert sum(2 * math.prod(s) for s in shapes.values()) == index["metadata"]["total_size"] == 17391790560
    assert shapes["llm.model.embed_tokens.weight"] == (151748, 4096) and shapes["resampler.proj"] == (4096, 4096)


@pytest.mark.parametrize("version", ["4.5", "4.6"])
def test_layout_is_the_real_one(store, version):
    ckpt = store.real_layout(version)
    ref = real_dir(version)
    tl, vl = DEFAULT_LAYERS[version]
    cfg, real = (json.loads((p / "config.json").read_text()) for p in (ckpt, ref))
    for name in ("generation_config.json", "preprocessor_config.json"):
        assert (ckpt / name).read_bytes() == (ref / name).read_bytes()
    if version == "4.5":
        assert {k for k in cfg if cfg[k] != real[k]} == {"num_hidden_layers", "max_window_layers", "vision_config"}
        assert cfg["num_hidden_layers"] == tl and cfg["vision_config"] == {**real["vision_config"], "num_hidden_layers": vl}
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json",
                     "resampler.py", "modeling_minicpmv.py"):
            assert (ckpt / name).read_bytes() == ((ref / name) if (ref / name).exists() else
                                                  (ref / "remote-code" / name)).read_bytes(), name
        assert not (ckpt / "tokenizer.json").exists()
        index = json.loads((ref / "model.safetensors.index.json").read_text())["weight_map"]
        ours = json.loads((ckpt / "model.safetensors.index.json").read_text())
        want = {n: f for n, f in index.items() if keep(n, tl, vl)}
        assert ours["weight_map"] == want  # real names, each in its real shard
        shapes = shapes_45(real)
        seen, total = set(), 0
        for f in sorted(set(want.values())):
            for name, info in safetensors_header(ckpt / f).items():
                assert info["dtype"] == "BF16" and tuple(info["shape"]) == shapes[name], name
                assert want[name] == f
                seen.add(name)
                total += info["data_offsets"][1] - info["data_offsets"][0]
        assert seen == set(want) and ours["metadata"]["total_size"] == total
    else:
        tc, rc = cfg["text_config"], real["text_config"]
        assert {k for k in tc if tc[k] != rc[k]} == {"num_hidden_layers", "layer_types"}
        assert tc["layer_types"] == ["linear_attention"] * 3 + ["full_attention"] == rc["layer_types"][:tl]
        assert {k for k in cfg if cfg[k] != real[k]} == {"text_config", "vision_config"}
        assert cfg["vision_config"] == {**real["vision_config"], "num_hidden_layers": vl} and cfg["insert_layer_id"] < vl
        header = json.loads((ref / "model-safetensors-header.json").read_text())
        want = [(k, v) for k, v in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]) if keep(k, tl, vl)]
        got = sorted(safetensors_header(ckpt / "model.safetensors").items(), key=lambda kv: kv[1]["data_offsets"][0])
        assert [(k, v["dtype"], v["shape"]) for k, v in got] == [(k, v["dtype"], v["shape"]) for k, v in want]
        assert "lm_head.weight" not in dict(got) and not any("mtp" in k for k, _ in got)
        assert any(".vit_merger." in k for k, _ in got) and list(ckpt.glob("*.safetensors")) == [ckpt / "model.safetensors"]


@pytest.mark.parametrize("version", ["4.5", "4.6"])
def test_real_layout_converts(store, version):
    res = store.converted_real(version)
    text, mm = check_pair(res.text_path, res.mmproj_path)
    ckpt = store.real_layout(version)
    n_src = sum(os.path.getsize(p) for p in ckpt.glob("*.safetensors"))
    print(f"\nreal-layout {version}: {n_src / 1e9:.2f} GB of BF16 built in {store.timings[f'build {version}']:.1f} s; "
          f"converted in {res.seconds:.1f} s to {res.text_path.stat().st_size / 1e9:.2f} + "
          f"{res.mmproj_path.stat().st_size / 1e9:.3f} GB")
    tl, _ = DEFAULT_LAYERS[version]
    arch = {"4.5": "qwen3", "4.6": "qwen35"}[version]
    assert text.arch == arch and text.get(f"{arch}.block_count") == tl
    assert text.get(f"{arch}.embedding_length") == {"4.5": 4096, "4.6": 1024}[version]
    names = {t.name: t for t in text.tensors}
    vocab = {"4.5": 151748, "4.6": 248094}[version]
    assert names["token_embd.weight"].shape[1] == vocab and text.array_lengths["tokenizer.ggml.tokens"] == vocab
    assert ("output.weight" in names) == (version == "4.5")  # 4.6 ties the output to the embedding
    # the same vocabulary as the tiny fixture's conversion (both carry the real tokenizer)
    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.chat_template",
            "tokenizer.ggml.eos_token_id", "general.sampling.temp", "minicpmv_edge.tokenizer.normalizer")
    assert fields(res.text_path, keys) == fields(store.converted(f"minicpmv-{version}").text_path, keys)
    assert mm.get("clip.vision.block_count") == DEFAULT_LAYERS[version][1]


def test_real_45_converts_with_tokenizer_json_too(store, tmp_path):
    """The same 4.5 folder with tokenizer.json (as transformers writes it) instead of the slow files:
    the same vocabulary. The weights are linked, not copied."""
    from minicpmv_edge.convert import convert
    from minicpmv_edge.fixtures.qwen_tokenizers import set_form

    src = store.real_layout("4.5")
    alt = tmp_path / "v45-json"
    alt.mkdir()
    for f in src.iterdir():
        (alt / f.name).symlink_to(f) if f.suffix == ".safetensors" else shutil.copy(f, alt / f.name)
    set_form(alt, "json", "Qwen2Tokenizer")
    assert (alt / "tokenizer.json").exists() and not (alt / "vocab.json").exists()
    res = convert(alt, tmp_path / "out")
    try:
        keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_eos_token", "tokenizer.ggml.pre", "minicpmv_edge.tokenizer.normalizer")
        assert fields(store.converted_real("4.5").text_path, keys) == fields(res.text_path, keys)
    finally:
        shutil.rmtree(tmp_path / "out")
