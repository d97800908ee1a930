"""llama.cpp's own converter (convert_hf_to_gguf.py), for tests that compare against it.

It runs from the llama-cpp-python sdist of the installed version (the llama.cpp our
runtime links; bench/llama_tools.llama_source finds or downloads it) with that
sdist's own gguf-py, which is newer than the PyPI `gguf` wheel (it knows
MiniCPM-V 4.6's tensors and projector type). It converts the layouts llama.cpp
registers without trust_remote_code: MiniCPM-V 4.6 (text, and `--mmproj`) and
plain causal LMs (used with `--vocab-only` for the 2.6/4.5 tokenizers).

4.6 text is converted with `--no-mtp` by default: the real config declares
`mtp_num_hidden_layers: 1` but the checkpoint has no MTP tensors, and without the
flag the converter counts the MTP block anyway (block_count + 1,
nextn_predict_layers = 1), which llama.cpp then refuses to load ("tensor
'blk.N.attn_norm.weight' not found"; tests/test_real_layout.py shows it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def llama_cpp_source() -> Path:
    sys.path.insert(0, str(REPO))
    from bench.llama_tools import llama_source

    src = llama_source()
    if not (src / "convert_hf_to_gguf.py").is_file():
        raise FileNotFoundError(f"no convert_hf_to_gguf.py in the llama.cpp source {src}")
    return src


def convert_hf_to_gguf(model_dir, outfile, *args: str, timeout: int = 1800) -> Path:
    """Run `convert_hf_to_gguf.py model_dir --outfile outfile *args`; returns the output path."""
    src = llama_cpp_source()
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # set, it would use PyPI's gguf
    env["PYTHONPATH"] = str(src / "gguf-py")
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(outfile), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed ({r.returncode}): {r.stderr[-3000:]}")
    return Path(outfile)


def llama_converted_pair(model_dir, out_dir, outtype: str = "f16", no_mtp: bool = True) -> tuple[Path, Path]:
    """llama.cpp's (text, mmproj) pair of a MiniCPM-V 4.6 checkpoint, as its docs say to make it
    (docs/multimodal/minicpmv4.6.md): the text run and a `--mmproj` run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = convert_hf_to_gguf(model_dir, out / f"text-{outtype}.gguf", "--outtype", outtype,
                              *(["--no-mtp"] if no_mtp else []))
    mmproj = convert_hf_to_gguf(model_dir, out / f"mmproj-{outtype}.gguf", "--outtype", outtype, "--mmproj")
    return text, mmproj

