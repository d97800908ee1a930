"""MiniCPM-V 4.7 and MiniCPM-OCR 1.0: detection, the metadata they need, and bad input.

Bad input follows the other families' rule: one line naming the file and the problem, exit code
non-zero from the CLI, no .gguf left behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader

from minicpmv_edge import schema
from minicpmv_edge.convert import convert
from minicpmv_edge.errors import CheckpointError, UnsupportedModelError
from tests.logit_checks import assert_logits_match


def _kv(path) -> dict:
    r = GGUFReader(str(path))
    return {f.name: f.contents() for f in r.fields.values()}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "minicpmv_edge", *args], capture_output=True, text=True, timeout=300)


def _no_gguf(folder: Path) -> bool:
    return not folder.exists() or not [p for p in folder.iterdir() if ".gguf" in p.name]


def _copy(store, family, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(store.checkpoint(family), dst)
    return dst


def _edit(path: Path, **changes):
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


def test_47_detected_and_canvas_ids_written(store):
    res = store.converted("minicpmv-4.7")
    assert res.manifest.family == "minicpmv-4.7"
    cfg = json.loads((Path(res.manifest.source) / "config.json").read_text())
    kv = _kv(res.text_path)
    assert kv[schema.EDGE_IMAGE_POSITIONS] == schema.POSITIONS_CANVAS
    assert kv[schema.EDGE_CANVAS_IMAGE_START] == cfg["image_start_id"]
    assert kv[schema.EDGE_CANVAS_IMAGE_END] == cfg["image_end_id"]
    assert kv[schema.EDGE_CANVAS_SLICE_START] == cfg["slice_start_id"]
    assert kv[schema.EDGE_CANVAS_SLICE_END] == cfg["slice_end_id"]
    assert kv[schema.EDGE_CANVAS_NEWLINE] == cfg["newline_id"]
    assert kv["general.architecture"] == "qwen35"
    names = {t.name for t in GGUFReader(str(res.text_path)).tensors}
    assert "output.weight" in names  # 4.7 does not tie its embeddings
    mm = _kv(res.mmproj_path)
    assert mm[schema.CLIP_PROJECTOR_TYPE] == schema.PROJECTOR_MINICPMV4_6 and mm[schema.CLIP_SCALE_FACTOR_U32] == 4


def test_ocr_detected_4x_tied(store):
    res = store.converted("minicpm-ocr-1.0")
    assert res.manifest.family == "minicpm-ocr-1.0"
    kv = _kv(res.text_path)
    assert kv[schema.EDGE_SMALL_IMAGE_UPSIZE] == "always"
    assert schema.EDGE_IMAGE_POSITIONS not in kv  # sequential, as 4.6
    names = {t.name for t in GGUFReader(str(res.text_path)).tensors}
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    mm = _kv(res.mmproj_path)
    assert mm[schema.CLIP_SCALE_FACTOR_U32] == 2 and mm[schema.EDGE_DOWNSAMPLE_MODE] == "4x"
    assert not any(n.startswith("v.vit_merger.") for n in (t.name for t in GGUFReader(str(res.mmproj_path)).tensors))


def test_47_without_marker_ids_is_refused(store, tmp_path):
    ckpt = _copy(store, "minicpmv-4.7", tmp_path)
    _edit(ckpt / "config.json", image_start_id=None, newline_id=None)
    r = _cli("convert", str(ckpt), "-o", str(tmp_path / "out"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "config.json" in lines[0] and "image_start_id" in lines[0] and "newline_id" in lines[0]
    assert _no_gguf(tmp_path / "out")


def test_47_with_marker_ids_that_name_other_tokens_is_refused(store, tmp_path):
    ckpt = _copy(store, "minicpmv-4.7", tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    _edit(ckpt / "config.json", slice_start_id=cfg["image_start_id"])
    with pytest.raises(CheckpointError, match="slice_start_id=.* names token '<image>', not '<slice>'"):
        convert(ckpt, tmp_path / "out")
    assert _no_gguf(tmp_path / "out")


def test_47_unknown_text_model_is_refused_clearly(store, tmp_path):
    ckpt = _copy(store, "minicpmv-4.7", tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["text_config"]["model_type"] = "qwen3_text"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="qwen3_text.* not a Qwen3.5 text model"):
        convert(ckpt, tmp_path / "out")
    assert _no_gguf(tmp_path / "out")


def test_47_moe_missing_expert_is_refused(store, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = _copy(store, "minicpmv-4.7-moe", tmp_path)
    f = next(ckpt.glob("*.safetensors"))
    sd = load_file(str(f))
    del sd["model.language_model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(sd, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="experts.3.up_proj.weight' is missing"):
        convert(ckpt, tmp_path / "out")
    assert _no_gguf(tmp_path / "out")


def test_ocr_with_unsupported_vision_shape_is_refused(store, tmp_path):
    """MiniCPMOcrVisionConfig's defaults (image 224, patch 16: a 14x14 position table) do not fit
    llama.cpp's fixed 70x70 position bucketing."""
    ckpt = _copy(store, "minicpm-ocr-1.0", tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["vision_config"].update(image_size=224, patch_size=16)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    r = _cli("convert", str(ckpt), "-o", str(tmp_path / "out"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "config.json" in lines[0] and "14x14" in lines[0] and "70x70" in lines[0]
    assert _no_gguf(tmp_path / "out")


def test_ocr_adaptive_upsize_is_refused(store, tmp_path):
    ckpt = _copy(store, "minicpm-ocr-1.0", tmp_path)
    _edit(ckpt / "preprocessor_config.json", small_image_upsize="adaptive")
    with pytest.raises(UnsupportedModelError, match="adaptive"):
        convert(ckpt, tmp_path / "out")
    assert _no_gguf(tmp_path / "out")


def test_family_flag_names_both(store, tmp_path):
    r = _cli("convert", str(store.checkpoint("minicpm-ocr-1.0")), "-o", str(tmp_path / "o"), "--family",
             "minicpm-ocr-1.0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["family"] == "minicpm-ocr-1.0"


def test_inspect_describes_both(store):
    r47 = _cli("inspect", str(store.converted("minicpmv-4.7").text_path.parent), "--json")
    rocr = _cli("inspect", str(store.converted("minicpm-ocr-1.0").text_path.parent), "--json")
    assert r47.returncode == 0 and rocr.returncode == 0, r47.stderr + rocr.stderr
    t47 = json.dumps(json.loads(r47.stdout))
    tocr = json.dumps(json.loads(rocr.stdout))
    assert '"minicpmv_edge.image.positions": "canvas"' in t47 and "minicpmv-4.7" in t47
    assert '"minicpmv_edge.image.small_image_upsize": "always"' in tocr and '"4x"' in tocr


def test_47_moe_text_logits_match_transformers(store):
    """4.7's Qwen3.5 MoE text variant -> llama.cpp qwen35moe: expert stacking, router, gated shared
    expert; next-token logits vs transformers' forward on text prompts."""
    import numpy as np

    from minicpmv_edge.edge_runtime.engine import Context, Model
    from tests.reference.merger_e2e import MergerReference

    res = store.converted("minicpmv-4.7-moe")
    kv = _kv(res.text_path)
    assert kv["general.architecture"] == "qwen35moe" and kv["qwen35moe.expert_count"] == 4
    assert kv["qwen35moe.expert_used_count"] == 2 and kv["qwen35moe.expert_shared_feed_forward_length"] == 96
    ref = MergerReference(res.manifest.source)
    model = Model(str(res.text_path))
    ctx = Context(model, n_ctx=256, n_batch=64, n_threads=2)
    rng = np.random.default_rng(0)
    prompts = [model.tokenize(t) for t in ("Hello, world!", "def f(x):\n    return x * 2", "图片里有什么？")]
    prompts += [rng.integers(0, 600, size=n).tolist() for n in (5, 13, 29)]
    for toks in prompts:
        ctx.clear()
        ctx.decode(toks)
        got = ctx.logits()
        import torch

        with torch.no_grad():
            ids = torch.tensor([toks])
            want = ref.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float().numpy()
        assert_logits_match(got, want, str(toks[:6]))
    ctx.close()
    model.close()
