"""Vision-encoder choice: `mmproj_type` (a derived projector, made once), `vision_encoder="onnx"` (an
export-vision folder), `auto` (the platform's measured default), each at the fidelity floor: image
embeddings with per-token cosine >= 0.995 against llama.cpp's encoder on the F16 projector, and the
same greedy answer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime.encoder_choice import AUTO_ONNX, file_type, platform_key
from minicpmv_edge.edge_runtime.engine import Bitmap
from minicpmv_edge.errors import InputError
from tests.runtime_helpers import noise_image

FLOOR = 0.995
GREEDY = dict(temperature=0, repeat_penalty=1.0, max_tokens=12)


@pytest.fixture(scope="module")
def v45(store):
    return store.converted("minicpmv-4.5")


@pytest.fixture(scope="module")
def export45(store, tmp_path_factory):
    """The 4.5 fixture's vision tower + resampler as ONNX, for 448x448 slices."""
    from minicpmv_edge.convert.vision_export import export_vision

    out = tmp_path_factory.mktemp("onnx45") / "vision-onnx"
    export_vision(store.checkpoint("minicpmv-4.5"), out, "onnx", grids=[(32, 32)], precisions=("fp32",), verify=False)
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICPMV_EDGE_CACHE", str(tmp_path / "cache"))


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def _embeddings(m: MiniCPMV, rgb: np.ndarray) -> np.ndarray:
    """Every image chunk's embedding rows, through whatever encoder `m` uses."""
    m.reset()
    m.cache._d.clear()
    m.prefill([{"role": "user", "content": [Image.fromarray(rgb)]}])
    keys = [u[1] for u in m.session.units if u[0] == "img"]
    return np.concatenate([m.cache.get(k) for k in keys])


def test_mmproj_type_makes_a_derived_projector_once_within_the_floor(v45, tmp_path):
    ref = MiniCPMV(v45.text_path, v45.mmproj_path, n_ctx=1024, n_threads=2, vision_encoder="mtmd")
    assert ref.encoder.mmproj == v45.mmproj_path and ref.encoder.mmproj_type == "f16"
    q8 = MiniCPMV(v45.text_path, v45.mmproj_path, n_ctx=1024, n_threads=2, mmproj_type="q8_0")
    derived = q8.encoder.mmproj
    assert derived != v45.mmproj_path and file_type(derived) == "q8_0"
    assert derived.parent == tmp_path / "cache" / "mmproj"
    stamp = derived.stat().st_mtime_ns
    again = MiniCPMV(v45.text_path, v45.mmproj_path, n_ctx=256, n_threads=2, mmproj_type="q8_0")
    assert again.encoder.mmproj == derived and derived.stat().st_mtime_ns == stamp  # made once, reused
    again.close()
    rgb = noise_image(448, 448, seed=41)
    assert _min_cos(_embeddings(ref, rgb), _embeddings(q8, rgb)) >= FLOOR
    msgs = [{"role": "user", "content": [Image.fromarray(rgb), "What is it?"]}]
    ref.reset()
    q8.reset()
    assert q8.chat(msgs, **GREEDY).raw == ref.chat(msgs, **GREEDY).raw
    for m in (ref, q8):
        m.close()


def test_onnx_encoder_within_the_floor_and_auto_picks_it_where_measured(v45, export45, tmp_path):
    ref = MiniCPMV(v45.text_path, v45.mmproj_path, n_ctx=1024, n_threads=2, vision_encoder="mtmd")
    onnx = MiniCPMV(v45.text_path, v45.mmproj_path, n_ctx=1024, n_threads=2, vision_encoder="onnx",
                    vision_onnx=str(export45))
    assert onnx.encoder.kind == "onnx"
    rgb = noise_image(448, 448, seed=42)
    assert _min_cos(_embeddings(ref, rgb), _embeddings(onnx, rgb)) >= FLOOR
    msgs = [{"role": "user", "content": [Image.fromarray(rgb), "What is it?"]}]
    ref.reset()
    onnx.reset()
    assert onnx.chat(msgs, **GREEDY).raw == ref.chat(msgs, **GREEDY).raw
    # auto: an export beside the projector is used where ONNX Runtime measured faster (x86-64 CPUs)
    folder = tmp_path / "model"
    folder.mkdir()
    for f in (v45.text_path, v45.mmproj_path):
        (folder / f.name).symlink_to(f)
    auto_plain = MiniCPMV(folder / v45.text_path.name, folder / v45.mmproj_path.name, n_ctx=256, n_threads=2)
    assert auto_plain.encoder.kind == "mtmd" and auto_plain.encoder.mmproj_type == "f16"
    shutil.copytree(export45, folder / "vision-onnx")
    auto = MiniCPMV(folder / v45.text_path.name, folder / v45.mmproj_path.name, n_ctx=256, n_threads=2)
    assert auto.encoder.kind == ("onnx" if platform_key(False) in AUTO_ONNX else "mtmd")
    for m in (ref, onnx, auto_plain, auto):
        m.close()


def test_onnx_int8_is_made_once_and_stays_within_the_floor(v45, export45, tmp_path):
    """onnx_precision="int8": ONNX Runtime's dynamic quantization of the fp32 graph, written once beside it
    (onnx_int8.py) and reused; per-token cosine against llama.cpp's F16 encoder and the greedy answer hold."""
    export = tmp_path / "vision-onnx"
    shutil.copytree(export45, export)
    ref = MiniCPMV(v45.text_path, v45.mmproj_path, n_ctx=1024, n_threads=2, vision_encoder="mtmd")
    q = MiniCPMV(v45.text_path, v45.mmproj_path, n_ctx=1024, n_threads=2, vision_encoder="onnx",
                 vision_onnx=str(export), onnx_precision="int8")
    assert "int8" in q.encoder.describe()
    made = export / "vision-int8.onnx"
    stamp = made.stat().st_mtime_ns
    import onnx

    ops = {n.op_type for n in onnx.load(str(made)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops  # int8 matmuls, not a copy of the fp32 graph
    for seed in (42, 44):
        rgb = noise_image(448, 448, seed=seed)
        assert _min_cos(_embeddings(ref, rgb), _embeddings(q, rgb)) >= FLOOR
    msgs = [{"role": "user", "content": [Image.fromarray(noise_image(448, 448, seed=42)), "What is it?"]}]
    ref.reset()
    q.reset()
    # Random weights over the real 151k vocabulary put many greedy steps on near-ties that any rounding of the
    # image embeddings may flip; the int8 encoder must choose as the reference does wherever the reference's
    # choice is clear (top-2 margin >= 0.05 nats), up to the first near-tie (margins here: 0.08, 0.03, ...).
    want = ref.chat(msgs, **GREEDY, logprobs=True, top_logprobs=2).logprobs
    got = q.chat(msgs, **GREEDY, logprobs=True, top_logprobs=1).logprobs
    clear = next((i for i, e in enumerate(want) if e.top[0].logprob - e.top[1].logprob < 0.05), len(want))
    assert clear >= 1, [round(e.top[0].logprob - e.top[1].logprob, 3) for e in want]
    assert [e.token_id for e in got[:clear]] == [e.token_id for e in want[:clear]]
    again = MiniCPMV(v45.text_path, v45.mmproj_path, n_ctx=256, n_threads=2, vision_encoder="onnx",
                     vision_onnx=str(export), onnx_precision="int8")
    assert made.stat().st_mtime_ns == stamp  # reused, not made again
    for m in (ref, q, again):
        m.close()


def test_a_foreign_export_is_not_used_by_auto(store, v45, export45, tmp_path, caplog):
    """auto never trusts an export of another checkpoint: llama.cpp's encoder, with a warning."""
    res = store.converted("minicpmv-4.0")
    folder = tmp_path / "m40"
    folder.mkdir()
    for f in (res.text_path, res.mmproj_path):
        (folder / f.name).symlink_to(f)
    shutil.copytree(export45, folder / "vision-onnx")
    m = MiniCPMV(folder / res.text_path.name, folder / res.mmproj_path.name, n_ctx=256, n_threads=2)
    assert m.encoder.kind == "mtmd"
    if platform_key(False) in AUTO_ONNX:
        assert "not using the vision export" in caplog.text
    m.close()


def test_bad_choices_are_refused(v45):
    for kw, match in [(dict(mmproj_type="bf16"), "mmproj_type"), (dict(onnx_precision="int4"), "onnx_precision"),
                      (dict(vision_encoder="coreml"), "vision_encoder"), (dict(vision_encoder="onnx"), "export-vision")]:
        with pytest.raises(InputError, match=match):
            MiniCPMV(v45.text_path, v45.mmproj_path, n_ctx=256, **kw)


def test_cli_flags_reach_the_encoder(v45, export45, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(v45.text_path.parent, folder)
    shutil.copytree(export45, folder / "vision-onnx")
    img = tmp_path / "a.png"
    Image.fromarray(noise_image(448, 448, seed=43)).save(img)
    base = [sys.executable, "-m", "minicpmv_edge", "run", str(folder), "--image", str(img), "-p", "What is it?",
            "-n", "8", "--temp", "0", "-t", "2", "--json"]
    outs = {}
    for name, extra in [("mtmd", ["--vision-encoder", "mtmd"]), ("onnx", ["--vision-encoder", "onnx"]),
                        ("q8", ["--mmproj-type", "q8_0"])]:
        r = subprocess.run(base + extra, capture_output=True, text=True, timeout=600,
                           env={**__import__("os").environ, "MINICPMV_EDGE_CACHE": str(tmp_path / "c")})
        assert r.returncode == 0, r.stderr[-1500:]
        outs[name] = json.loads(r.stdout)["text"]
    assert outs["onnx"] == outs["mtmd"] == outs["q8"]
    r = subprocess.run(base[:5] + ["--vision-encoder", "onnx", "--vision-onnx", str(tmp_path / "nowhere"), "-p", "x"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "nowhere" in r.stderr


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_missing_onnxruntime_names_the_extra(v45, export45, tmp_path, monkeypatch, precision):
    """Without onnxruntime the ONNX encoder is refused with the extra to install (the CLI's exit code 2), as
    every other optional dependency is (minicpmv_edge/extras.py)."""
    from minicpmv_edge.errors import MissingExtraError

    export = tmp_path / "export"
    shutil.copytree(export45, export)
    for name in [n for n in sys.modules if n == "onnxruntime" or n.startswith("onnxruntime.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without the package imports
    with pytest.raises(MissingExtraError, match=r"needs onnxruntime: pip install 'minicpmv-edge\[onnx\]'"):
        MiniCPMV(v45.text_path, v45.mmproj_path, n_ctx=256, n_threads=2, vision_encoder="onnx",
                 vision_onnx=str(export), onnx_precision=precision)
    assert sorted(p.name for p in export.iterdir()) == sorted(p.name for p in export45.iterdir())  # nothing made
