"""Run llama.cpp's own converter on a checkpoint: the GGUF pair most MiniCPM-V 4.6 users have.

`convert_hf_to_gguf.py` from the llama-cpp-python sdist of the installed version (the
llama.cpp our runtime links; bench/llama_tools.llama_source finds or downloads it), with
that sdist's own gguf-py on PYTHONPATH (the PyPI gguf lacks the 4.6 names): once for the
text model (`--no-mtp`: the 4.6 config declares an MTP layer it ships no tensors for,
docs/multimodal/minicpmv4.6.md) and once with `--mmproj` for the projector.

llama.cpp names the BPE pre-tokenizer by hashing the tokens of a probe string and knows the
hash of the real Qwen3.5 tokenizer only (conversion/base.py: "qwen35" for MiniCPM-V-4_6).
For a checkpoint whose tokenizer is not the real one, `pre=` answers that same name through
a wrapper that changes nothing else (as bench/convert.py does); with the real tokenizer
leave it None and llama.cpp decides by itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WRAPPER = '''\
import runpy, sys
root, pre = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [root + "/convert_hf_to_gguf.py"] + sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def llama_convert(src: Path, out: Path, outtype: str = "f16", pre: str | None = None) -> tuple[Path, Path]:
    """Returns (text.gguf, mmproj.gguf) written into `out` by llama.cpp's converter."""
    from bench.llama_tools import llama_source

    llama = llama_source()
    out.mkdir(parents=True, exist_ok=True)
    text, mmproj = out / f"llama-text-{outtype}.gguf", out / f"llama-mmproj-{outtype}.gguf"
    env = dict(os.environ, PYTHONPATH=str(llama / "gguf-py"), NO_LOCAL_GGUF="")
    if pre is None:
        base = [sys.executable, str(llama / "convert_hf_to_gguf.py")]
    else:
        (out / "llama_convert_wrapper.py").write_text(WRAPPER)
        base = [sys.executable, str(out / "llama_convert_wrapper.py"), str(llama), pre]
    base += [str(src), "--outtype", outtype]
    for cmd, dest in ((base + ["--no-mtp"], text), (base + ["--mmproj"], mmproj)):
        if dest.exists():
            continue
        r = subprocess.run(cmd + ["--outfile", str(dest)], env=env, capture_output=True, text=True)
        if r.returncode != 0 or not dest.exists():
            raise RuntimeError(f"llama.cpp's converter failed ({' '.join(cmd[1:])}):\n{r.stderr[-3000:]}")
    return text, mmproj
