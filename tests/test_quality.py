"""quality: KL / top-1 over the shipped corpus orders quantization types as expected."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from minicpmv_edge.quantize.llama import quantize_text
from minicpmv_edge.quantize.quality import corpus_text, image_set, text_quality


@pytest.fixture(scope="module")
def variants(store, tmp_path_factory):
    f16 = store.converted("minicpmv-4.5")
    d = tmp_path_factory.mktemp("quality")
    out = {"F16": f16.text_path}
    for t in ("Q8_0", "Q4_K_M"):
        out[t] = quantize_text(f16.text_path, d / f"{t}.gguf", t, nthread=1).path
    return f16, out


def test_kl_orders_types(variants):
    _, v = variants
    same = text_quality(v["F16"], v["F16"], n_threads=1)
    q8 = text_quality(v["F16"], v["Q8_0"], n_threads=1)
    q4 = text_quality(v["F16"], v["Q4_K_M"], n_threads=1)
    assert same.kl_max < 1e-9 and same.top1 == 1.0
    assert q8.n_tokens == q4.n_tokens > 500 and q8.n_chunks > 1
    assert 0 < q8.kl_mean < q4.kl_mean and q8.kl_max < q4.kl_max and q8.top1 >= q4.top1


def test_fixed_inputs():
    text = corpus_text()
    assert 2000 < len(text.encode()) < 16000 and "量化" in text and "def " in text
    a, b = image_set(), image_set()
    assert [n for n, _ in a] == [n for n, _ in b] and all((x == y).all() for (_, x), (_, y) in zip(a, b))
    assert any(img.shape[:2] == (448, 448) for _, img in a) and any(img.shape[1] > 448 for _, img in a)


def test_cli_json_and_table(variants):
    f16, v = variants
    args = [sys.executable, "-m", "minicpmv_edge", "quality", str(v["F16"]), str(v["Q8_0"]), "--threads", "1",
            "--chunk", "256"]
    r = subprocess.run(args + ["--json", "--mmproj-ref", str(f16.mmproj_path), "--mmproj", str(f16.mmproj_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["text"]["kl_mean"] > 0 and data["vision"]["cos_min"] > 0.9999 and data["vision"]["n_images"] == 5
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "KL mean" in r.stdout and "top-1 agree" in r.stdout, r.stderr
