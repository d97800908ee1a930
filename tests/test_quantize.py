"""quantize: every llama.cpp type loads and runs; projector rules; bad input leaves nothing behind."""

from __future__ import annotations

import json
import resource
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter

from minicpmv_edge.errors import GGUFError, InputError
from minicpmv_edge.gguf_info import read_info
from minicpmv_edge.quantize.llama import NEEDS_IMATRIX, SUPPORTED, quantize_text
from minicpmv_edge.quantize.mmproj import quantize_mmproj


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minicpmv_edge", *args], capture_output=True, text=True,
                          timeout=300, **kw)


@pytest.fixture(scope="module")
def f16(store):
    return store.converted("minicpmv-4.5")


def runs(path: Path) -> np.ndarray:
    from minicpmv_edge.edge_runtime.engine import Context, Model

    m = Model(str(path))
    c = Context(m, n_ctx=64, n_batch=64, n_threads=1)
    c.decode(m.tokenize("Hello 你好 world"))
    out = c.logits()
    c.close()
    m.close()
    assert np.all(np.isfinite(out))
    return out


def no_gguf(folder: Path, keep: set[str]) -> bool:
    return not [p for p in folder.iterdir() if ".gguf" in p.name and p.name not in keep]


@pytest.mark.parametrize("qtype", SUPPORTED)
def test_every_type_loads_and_runs(f16, tmp_path, qtype):
    out = tmp_path / f"t-{qtype}.gguf"
    res = quantize_text(f16.text_path, out, qtype, nthread=1)
    assert res.path == out and out.stat().st_size == res.bytes
    info = read_info(out)
    assert info.get("general.file_type") == {"F32": 0, "F16": 1, "BF16": 32}.get(qtype, info.get("general.file_type"))
    runs(out)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("qtype", sorted(NEEDS_IMATRIX))
def test_imatrix_types_refused_without_imatrix(f16, tmp_path, qtype):
    with pytest.raises(InputError, match="importance matrix"):
        quantize_text(f16.text_path, tmp_path / "x.gguf", qtype)
    assert not list(tmp_path.iterdir())


def _weights(path):
    return [t for t in read_info(path).tensors if len(t.shape) == 2 and t.name.endswith(".weight")
            and "norm" not in t.name]


def write_imatrix_gguf(text: Path, dst: Path) -> Path:
    w = GGUFWriter(dst, "imatrix")  # tools/imatrix writes general.type=imatrix + these keys
    w.add_array("imatrix.datasets", ["corpus.txt"])
    w.add_uint32("imatrix.chunk_count", 4)
    w.add_uint32("imatrix.chunk_size", 128)
    rng = np.random.default_rng(0)
    for t in _weights(text):
        w.add_tensor(f"{t.name}.in_sum2", (rng.random((1, t.shape[0])) * 50).astype(np.float32))
        w.add_tensor(f"{t.name}.counts", np.full((1, 1), 10.0, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def write_imatrix_dat(text: Path, dst: Path) -> Path:
    ws = _weights(text)
    buf = bytearray(struct.pack("<i", len(ws)))
    for t in ws:
        name = t.name.encode()
        buf += struct.pack("<i", len(name)) + name + struct.pack("<ii", 3, t.shape[0])
        buf += (np.linspace(1, 3, t.shape[0], dtype=np.float32) * 3).tobytes()
    buf += struct.pack("<i", 7) + struct.pack("<i", 5) + b"wiki2"
    dst.write_bytes(bytes(buf))
    return dst


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_imatrix_is_passed_to_llama_cpp(f16, tmp_path, fmt):
    imx = (write_imatrix_gguf if fmt == "gguf" else write_imatrix_dat)(f16.text_path, tmp_path / f"imatrix.{fmt}")
    out = tmp_path / "iq2.gguf"
    quantize_text(f16.text_path, out, "IQ2_XXS", imatrix=imx, nthread=1)
    info = read_info(out)
    assert info.get("quantize.imatrix.entries_count") == len(_weights(f16.text_path))
    assert info.get("quantize.imatrix.file") == str(imx)
    assert any(t.ggml_type == Q.IQ2_XXS for t in info.tensors)  # 256-wide ffn_down rows
    runs(out)


def test_output_and_embedding_types(f16, tmp_path):
    out = tmp_path / "q.gguf"
    quantize_text(f16.text_path, out, "Q4_K_M", output_tensor_type="q8_0", token_embedding_type="q5_0", nthread=1)
    info = read_info(out)
    assert Q(info.tensor("output.weight").ggml_type) == Q.Q8_0
    assert Q(info.tensor("token_embd.weight").ggml_type) == Q.Q5_0


def test_bad_inputs_leave_nothing(f16, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_text("definitely not a gguf")
    with pytest.raises(GGUFError, match="not a GGUF"):
        quantize_text(junk, tmp_path / "o.gguf", "Q4_0")
    with pytest.raises(InputError, match="unknown quantization type 'Q9_9'"):
        quantize_text(f16.text_path, tmp_path / "o.gguf", "Q9_9")
    q8 = tmp_path / "q8.gguf"
    quantize_text(f16.text_path, q8, "Q8_0", nthread=1)
    with pytest.raises(InputError, match="already quantized.*--allow-requantize"):
        quantize_text(q8, tmp_path / "o.gguf", "Q4_0")
    quantize_text(q8, tmp_path / "re.gguf", "Q4_0", allow_requantize=True, nthread=1)
    with pytest.raises(InputError, match="vision projector"):
        quantize_text(f16.mmproj_path, tmp_path / "o.gguf", "Q4_0")
    assert no_gguf(tmp_path, {"junk.gguf", "q8.gguf", "re.gguf"})
    r = cli("quantize", str(junk), str(tmp_path / "o.gguf"), "--type", "Q4_0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "junk.gguf" in r.stderr, r.stderr


def _limit_file_size():  # in the child: a 200 kB file-size cap stands in for a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


@pytest.mark.parametrize("which", ["text", "mmproj"])
def test_full_disk_leaves_nothing(f16, tmp_path, which):
    src = f16.text_path if which == "text" else f16.mmproj_path
    r = cli("quantize", str(src), str(tmp_path / "o.gguf"), "--type", "Q8_0", preexec_fn=_limit_file_size)
    assert r.returncode != 0
    assert "disk full" in r.stderr and "o.gguf" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.iterdir())


def test_mmproj_q8_0_rules(f16, tmp_path):
    out = tmp_path / "mm-q8.gguf"
    r = cli("quantize", str(f16.mmproj_path), str(out), "--type", "Q8_0", "--json")  # routed by arch clip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "mmproj"
    src, info = read_info(f16.mmproj_path), read_info(out)
    assert {k: v for k, v in src.kv.items() if not k.startswith(("general.file_type", "GGUF"))} == \
           {k: v for k, v in info.kv.items() if not k.startswith(("general.file_type", "GGUF"))}
    for t in info.tensors:
        ty, was = Q(t.ggml_type), Q(src.tensor(t.name).ggml_type)
        if "patch_embd.weight" in t.name:
            assert ty == Q.F16
        elif len(t.shape) < 2 or not t.name.endswith(".weight") or "position_embd" in t.name or ".ln" in t.name:
            assert ty == was, t.name  # biases, norms, position tables, resampler.query: untouched (F32)
        elif t.shape[0] % 32:  # ggml ne0 = row length (172 here, 4304 in SigLIP)
            assert ty == Q.F16, t.name
        else:
            assert ty == Q.Q8_0, t.name
    with pytest.raises(InputError, match="never written as BF16"):
        quantize_mmproj(f16.mmproj_path, tmp_path / "bf.gguf", "BF16")
    with pytest.raises(InputError, match="not a vision projector"):
        quantize_mmproj(f16.text_path, tmp_path / "x.gguf", "Q8_0")

    from minicpmv_edge.quantize.quality import image_set, vision_quality

    v = vision_quality(f16.text_path, f16.mmproj_path, out, image_set(small=True)[:2], n_threads=1)
    assert v.cos_min > 0.99 and v.n_embeddings > 0


def test_convert_with_quant(store, tmp_path):
    from minicpmv_edge.convert import convert
    from minicpmv_edge.manifest import Manifest

    ckpt = store.checkpoint("minicpmv-4.5")
    res = convert(ckpt, tmp_path / "a", quant="Q4_K_M")
    m = Manifest.load(tmp_path / "a")
    assert m.text == "minicpmv-4.5-text-q4_k_m.gguf" and res.text_path.name == m.text
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([m.text, m.mmproj, "manifest.json"])
    assert m.files[m.text] == {"kind": "text", "type": "q4_k_m", "bytes": res.text_path.stat().st_size}
    assert m.files[m.mmproj]["kind"] == "mmproj" and m.quant["text_quant"]["type"] == "Q4_K_M"
    runs(res.text_path)

    r = cli("convert", str(ckpt), "-o", str(tmp_path / "b"), "--quant", "Q8_0", "--keep-intermediate", "--json")
    assert r.returncode == 0, r.stderr
    m = Manifest.load(tmp_path / "b")
    kinds = {v["kind"]: (k, v["type"]) for k, v in m.files.items()}
    assert kinds["text"] == (m.text, "q8_0") and kinds["text-intermediate"][1] == "f16"
    assert all((tmp_path / "b" / k).stat().st_size == v["bytes"] for k, v in m.files.items())
    with pytest.raises(InputError, match="unknown quantization type"):
        convert(ckpt, tmp_path / "c", quant="Q4_K_X")
    assert not (tmp_path / "c").exists()
