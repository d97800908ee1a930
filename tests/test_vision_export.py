"""Vision export (ONNX / CoreML) and the external-encoder runtime path.

- the export module equals the reference torch forward (tests/reference) on a 448x448 image;
- ONNX Runtime equals the export module: fp32 max |diff| <= 1e-4, fp16 cosine >= 0.999, on
  random pixels at several grids (one dynamic graph);
- CoreML: the package loads with coremltools on Linux; its spec has the declared input,
  output and precisions; the traced module is the ONNX-tested one (same object, same
  state hash as metadata.json); prediction needs macOS and is not run;
- external encoder: per-chunk embeddings equal mtmd's (cosine >= 0.999), same greedy answer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest


from minicpmv_edge.convert.vision_export import export_vision  # noqa: E402
from minicpmv_edge.errors import InputError, MediaError, MismatchError, UnsupportedModelError  # noqa: E402

from tests.runtime_helpers import noise_image  # noqa: E402

GRIDS = [(32, 32), (28, 36)]
GREEDY = dict(temperature=0, repeat_penalty=1.0, max_tokens=12)
# photos (width, height): no slicing, 2x2 slices, tall slices; their grids are exported
PHOTOS = [(300, 200), (1000, 700), (640, 1280)]


def _cos_min(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


@pytest.fixture(scope="module")
def onnx_exports(store, tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-onnx")
    cache = {}

    def get(family):
        if family not in cache:
            from minicpmv_edge.edge_runtime.external_encoder import slice_plan

            from minicpmv_edge.edge_runtime.processor_images import ImageSpec, plan_sizes

            def grids(sl):
                out = list(GRIDS)
                for w, h in PHOTOS:
                    for cw, ch in slice_plan(w, h, sl["image_size"], 14, sl["n_merge"], sl["keep_small_whole"]).sizes():
                        out.append((ch // 14, cw // 14))
                    if family.startswith("minicpmv-4.6"):  # the runtime's processor-exact crops (4.6 / OCR / 4.7)
                        mode = {4: "16x", 2: "4x"}[sl["n_merge"]]
                        for cw, ch in plan_sizes(w, h, ImageSpec(downsample_mode=mode))[0]:
                            out.append((ch // 14, cw // 14))
                return sorted(set(out))

            from minicpmv_edge import progress

            real, bars = progress.bar, []  # record the export's progress bars (test_export_progress)

            def recording(total, desc, unit="B"):
                bars.append(rec := {"total": total, "desc": desc, "unit": unit, "n": 0})

                class Bar(progress._Off):
                    def update(self, n=1):
                        rec["n"] += n
                return Bar()

            progress.bar = recording
            try:
                cache[family] = export_vision(store.checkpoint(family), root / family, "onnx", grids=grids,
                                              verify=False)
            finally:
                progress.bar = real
            cache[family + ":bars"] = bars
        return cache[family]

    get.cache = cache
    return get


FAMILIES = ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5", "minicpmv-4.6", "minicpmv-4.6-4x"]


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_matches_torch_module_and_reference(store, onnx_exports, family):
    import torch

    from minicpmv_edge.convert.vision_export.onnx_export import example_inputs, run_onnx
    from tests.reference import reference_for

    res = onnx_exports(family)
    m = res.metadata
    mod = res.module
    # 1. the export module is the reference forward
    rgb = noise_image(448, 448, seed=3)
    ref = reference_for(family)(store.checkpoint(family)).image_embeddings(rgb)
    from minicpmv_edge.edge_runtime.external_encoder import position_inputs, preprocess

    px = preprocess(rgb, m["image_mean"], m["image_std"])[0]
    idx = position_inputs(m["graph"], 32, 32, m.get("use_vit_merger", True))
    with torch.no_grad():
        ours = mod(torch.from_numpy(px), *[torch.from_numpy(idx[n]) for n in mod.input_names[1:]]).numpy()
    assert ours.shape == ref.shape == (m["tokens"]["32x32"], m["text_hidden"])
    assert np.abs(ours - ref).max() <= 1e-4
    # 2. ONNX Runtime vs the module, random pixels, two grids of one dynamic graph
    for seed, (gh, gw) in enumerate(GRIDS):
        args = example_inputs(m["graph"], mod.input_names, gh, gw, 14, m.get("use_vit_merger", True), seed=seed)
        with torch.no_grad():
            want = mod(*args).numpy()
        feeds = {n: a.numpy() for n, a in zip(mod.input_names, args)}
        fp32 = run_onnx(res.out_dir / m["files"]["fp32"], feeds)
        fp16 = run_onnx(res.out_dir / m["files"]["fp16"], feeds)
        assert fp32.dtype == fp16.dtype == np.float32 and fp32.shape == want.shape == (m["tokens"][f"{gh}x{gw}"],
                                                                                         m["text_hidden"])
        assert np.abs(fp32 - want).max() <= 1e-4
        assert _cos_min(fp16, want) >= 0.999
    # 3. the contract
    on_disk = json.loads((res.out_dir / "metadata.json").read_text())
    assert on_disk["family"] == family.replace("-4x", "") and on_disk["format"] == "onnx"
    assert [i["name"] for i in on_disk["inputs"]] == list(mod.input_names)
    assert on_disk["outputs"][0]["name"] == "embeddings" and on_disk["image_mean"] == [0.5, 0.5, 0.5]
    from minicpmv_edge.convert.vision_export.build import state_sha256

    assert on_disk["module"]["state_sha256"] == state_sha256(mod)


def test_coreml_package_spec_and_module_identity(store, onnx_exports, tmp_path):
    from minicpmv_edge.convert.vision_export.build import build, state_sha256
    from minicpmv_edge.convert.vision_export.coreml_export import describe_spec

    family = "minicpmv-4.6"
    res = export_vision(store.checkpoint(family), tmp_path / "ane", "coreml", grids=[(28, 36)])
    m = json.loads((tmp_path / "ane" / "metadata.json").read_text())
    assert m["files"] == {"28x36": "vision-28x36.mlpackage"}
    assert (m["precision"], m["compute_units"], m["minimum_deployment_target"]) == ("float16", "CPU_AND_NE", "iOS17")
    spec = describe_spec(tmp_path / "ane" / m["files"]["28x36"])
    assert spec["is_ml_program"] and spec["spec_version"] >= 8  # iOS 17 = spec 8
    assert spec["inputs"] == [{"name": "pixel_values", "dtype": "FLOAT32", "shape": [1, 3, 28 * 14, 36 * 14]}]
    assert spec["outputs"] == [{"name": "embeddings", "dtype": "FLOAT32", "shape": [m["tokens"]["28x36"], 128]}]
    assert spec["fp16_weights"]  # compute precision float16
    # the traced module is the export module, whose weights the ONNX test checked
    (fixed,) = res.traced
    assert fixed.inner is res.module
    h = state_sha256(fixed.inner)
    assert h == m["module"]["state_sha256"] == state_sha256(build(store.checkpoint(family)).module)
    assert h == onnx_exports(family).metadata["module"]["state_sha256"]


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_external_encoder_matches_mtmd(store, onnx_exports, family):
    from minicpmv_edge.edge_runtime import MiniCPMV
    from minicpmv_edge.edge_runtime.engine import Bitmap
    from minicpmv_edge.edge_runtime.external_encoder import OnnxVisionEncoder

    conv = store.converted(family)
    enc = OnnxVisionEncoder(onnx_exports(family).out_dir, n_threads=2)
    base = MiniCPMV(conv.text_path, conv.mmproj_path, n_ctx=2048, n_threads=2)
    ext = MiniCPMV(conv.text_path, conv.mmproj_path, n_ctx=2048, n_threads=2, vision_encoder=enc)
    try:
        for w, h in PHOTOS:
            rgb = noise_image(w, h, seed=w)
            if base.exact_images:  # 4.6: processor-exact crops, llama.cpp's encoder vs the ONNX graph
                from minicpmv_edge.edge_runtime.processor_images import layout

                crops = layout(rgb, base.session.planner.image_spec).crops
                mt = [base.vision.encode(c.pixels) for c in crops]
                ours = [enc.encode(np.ascontiguousarray(c.pixels.transpose(2, 0, 1)[None])) for c in crops]
                assert len(mt) == len(ours) >= 1
                assert all(_cos_min(a, b) >= 0.999 for a, b in zip(mt, ours)), (w, h)
                continue
            chunks = base.vision.tokenize(base.vision.marker, [Bitmap(rgb, "x")])
            mt = [base.vision.encode_chunk(chunks[i]) for i in range(len(chunks)) if chunks.kind(i) == 1]
            ours = [enc.encode(p) for p in enc.slices(rgb)]
            assert enc.n_chunks(rgb) == len(mt) == len(ours)
            assert all(_cos_min(a, b) >= 0.999 for a, b in zip(mt, ours)), (w, h)
            chunks.close()
        from PIL import Image

        img = Image.fromarray(noise_image(1000, 700, seed=7))
        msgs = [{"role": "user", "content": [img, "What is in the picture?"]}]
        a = base.chat(msgs, **GREEDY)
        b = ext.chat(msgs, **GREEDY)
        assert a.text == b.text and a.usage == b.usage
        assert ext.counters.images_encoded == 5  # overview + 2x2 slices, all through ONNX Runtime
    finally:
        base.close()
        ext.close()


def test_bad_inputs(store, onnx_exports, tmp_path):
    from minicpmv_edge.edge_runtime import MiniCPMV
    from minicpmv_edge.edge_runtime.external_encoder import OnnxVisionEncoder
    from minicpmv_edge.cli import main

    # unsupported family
    bad = tmp_path / "llava"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["LlavaForCausalLM"]}))
    with pytest.raises(UnsupportedModelError, match="unsupported model"):
        export_vision(bad, tmp_path / "o", "onnx")
    assert main(["export-vision", str(bad), "--format", "onnx", "-o", str(tmp_path / "o")]) == 2
    assert main(["export-vision", str(store.checkpoint("minicpmv-4.5")), "--format", "onnx", "-o",
                 str(tmp_path / "o"), "--grids", "32by32"]) == 2
    with pytest.raises(InputError, match="multiples of 4"):
        export_vision(store.checkpoint("minicpmv-4.6"), tmp_path / "o46", "onnx", grids=[(30, 30)])
    # a slice grid outside the exported set
    enc = OnnxVisionEncoder(onnx_exports("minicpmv-4.5").out_dir)
    with pytest.raises(MediaError, match="re-export with --grids 20x50"):
        enc.encode(np.zeros((1, 3, 20 * 14, 50 * 14), np.float32))
    # metadata that does not match the mmproj / text model
    conv46 = store.converted("minicpmv-4.6")
    with pytest.raises(MismatchError, match="minicpmv-4.5, the model is minicpmv-4.6"):
        MiniCPMV(conv46.text_path, conv46.mmproj_path, vision_encoder=enc)
    with pytest.raises(MismatchError, match="another checkpoint"):
        enc.check(mmproj=conv46.mmproj_path)
    with pytest.raises(MismatchError, match="width 128, the text model's is 64"):
        enc.check(text_n_embd=64)
    (tmp_path / "cm").mkdir()
    (tmp_path / "cm" / "metadata.json").write_text(json.dumps({"schema": 1, "format": "coreml"}))
    with pytest.raises(UnsupportedModelError, match="coreml export"):
        OnnxVisionEncoder(tmp_path / "cm")
    with pytest.raises(InputError, match="no metadata.json"):
        OnnxVisionEncoder(tmp_path)


def test_export_progress(onnx_exports):
    """export-vision reports one step per ONNX graph (the CLI draws it as a tqdm bar, as convert's)."""
    res = onnx_exports("minicpmv-4.5")
    steps = [b for b in onnx_exports.cache["minicpmv-4.5:bars"] if b["desc"] == "exporting ONNX graphs"]
    assert len(steps) == 1 and steps[0]["unit"] == "graph"
    assert steps[0]["total"] == len(res.metadata["files"]) == steps[0]["n"] >= 1, steps
