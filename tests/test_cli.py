"""The command-line surfaces of issue 2: `inspect` (describe, check a pair) and `demo`."""

from __future__ import annotations

import json
import subprocess
import sys


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minicpmv_edge", *args], capture_output=True, text=True, timeout=600)


def test_inspect_folder_and_pair(store):
    res = store.converted("minicpmv-4.5")
    r = cli("inspect", str(res.text_path.parent))
    assert r.returncode == 0 and "pair: OK" in r.stdout and "minicpmv-4.5" in r.stdout
    r = cli("inspect", str(res.text_path), "--json")
    d = json.loads(r.stdout)["files"][0]
    assert d["architecture"] == "qwen3" and d["minicpmv_edge.family"] == "minicpmv-4.5"
    assert d["tensors"] > 0 and d["vocab_size"] == 151748 and "F16" in d["dtypes"]


def test_inspect_reports_exactly_what_does_not_fit(store):
    t45, t26, t46 = (store.converted(f) for f in ("minicpmv-4.5", "minicpmv-2.6", "minicpmv-4.6"))
    r = cli("inspect", str(t45.text_path), str(t26.mmproj_path), "--json")
    assert r.returncode == 3
    problems = json.loads(r.stdout)["pair"]["problems"]
    assert any("projector version 6, got 3" in p for p in problems)
    assert any("families differ" in p for p in problems)
    r = cli("inspect", str(t46.text_path), str(t45.mmproj_path))
    assert r.returncode == 3 and "MISMATCH" in r.stdout and "minicpmv4_6" in r.stdout


def test_demo_runs_end_to_end():
    r = cli("demo", "--family", "minicpmv-2.6", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["family"] == "minicpmv-2.6" and d["usage"]["prompt_tokens"] > 64
    t = d["timings"]
    assert t["image_encode_ms"] and t["decode_tok_s"] > 0 and t["load_ms"] > 0
