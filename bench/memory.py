"""Peak memory of a MiniCPM-V 4.0-shaped Q4_K_M model with one 448x448 image at n_ctx 4096.

Goal (issue 6): <= 3.0 GB through the C bridge (OpenBMB's published figure for MiniCPM-V 4.0 on an
Apple M4 with Metal is 3.33 GB). The model is synthetic with the real 4.0 shapes (text: hidden 2560,
FFN 10240, 32 layers, 32/2 heads, vocab 73448; SigLIP-400M + resampler to 2560), random bf16 weights
written by bench/convert.py, converted by our converter, text quantized to Q4_K_M, mmproj F16.
Peak RSS = the child's ru_maxrss (weights are mmap'ed, so touched file pages count, as they do on a
phone). The C bridge, our Python runtime and llama-mtmd-cli each load, encode the image and generate
16 tokens, in their own process.

  python bench/memory.py [--work /tmp/minicpmv-bench] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# the project's packages first, bench helpers last: bench/convert.py and bench/quantize.py
# must not shadow the `convert` and `quantize` packages
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]

import _common  # noqa: E402
import llama_tools  # noqa: E402

OURS = r"""
import sys
from PIL import Image
from minicpmv_edge.edge_runtime import MiniCPMV
m = MiniCPMV(sys.argv[1], sys.argv[2], n_ctx=4096, n_threads=int(sys.argv[4]))
r = m.chat([{"role": "user", "content": [Image.open(sys.argv[3]), "Describe the image."]}],
           temperature=0, max_tokens=16)
print(r.usage)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/minicpmv-bench")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_convert", BENCH / "convert.py")
    conv_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv_bench)
    from minicpmv_edge.convert import convert
    from minicpmv_edge.manifest import Manifest
    from minicpmv_edge.quantize.llama import quantize_text

    ckpt, size = conv_bench.make_checkpoint(work, "4.0", 32)
    out = work / "gguf-v40-L32"
    if not (out / "manifest.json").exists():
        convert(ckpt, out)
    man = Manifest.load(out)
    f16, mmproj = man.path_of(out, "text"), man.path_of(out, "mmproj")
    q = out / "text-Q4_K_M.gguf"
    if not q.exists():
        quantize_text(f16, q, "Q4_K_M")
    mm_q8 = out / "mmproj-Q8_0.gguf"
    if not mm_q8.exists():
        from minicpmv_edge.quantize.mmproj import quantize_mmproj

        quantize_mmproj(mmproj, mm_q8, "Q8_0")  # SigLIP's 4304-wide rows stay F16
    import numpy as np
    from PIL import Image

    img = work / "bench-448.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (448, 448, 3), dtype=np.uint8)).save(img)
    from minicpmv_edge.edge_runtime.engine import repacking_ok

    runs = {
        "C bridge": [sys.executable, str(BENCH / "bridge.py"), "--child", "--text", str(q), "--mmproj", str(mmproj),
                     "--image", str(img), "-n", "16", "--threads", str(a.threads)],
        "C bridge, mmproj Q8_0": [sys.executable, str(BENCH / "bridge.py"), "--child", "--text", str(q), "--mmproj",
                                  str(mm_q8), "--image", str(img), "-n", "16", "--threads", str(a.threads)],
        "Python runtime": [sys.executable, "-c", OURS, str(q), str(mmproj), str(img), str(a.threads)],
        "llama-mtmd-cli": [str(llama_tools.build(["llama-mtmd-cli"])["llama-mtmd-cli"]), "-m", str(q), "--mmproj",
                           str(mmproj), "--image", str(img), "-p", "Describe the image.", "-n", "16", "-c", "4096",
                           "-t", str(a.threads), "--temp", "0", "--no-warmup"]
                          + ([] if repacking_ok(q) else ["--no-repack"]),
    }
    rows, result = [], {}
    for name, cmd in runs.items():
        r = _common.run_measured(cmd, tail_chars=3000)
        if not r.ok:
            raise RuntimeError(f"{name} failed:\n{r.stdout_tail}")
        gb = r.maxrss_bytes / 1e9
        result[name] = gb
        rows.append([name, f"{gb:.2f}", f"{r.peak_anon_bytes / 1e9:.2f}", f"{r.peak_file_bytes / 1e9:.2f}"])
    files = {p.name: p.stat().st_size / 1e9 for p in (q, mmproj, mm_q8)}
    print(f"model: MiniCPM-V 4.0 shapes, text Q4_K_M {files[q.name]:.2f} GB + mmproj F16 {files[mmproj.name]:.2f} GB"
          f" (Q8_0: {files[mm_q8.name]:.2f} GB); one 448x448 image; n_ctx 4096; {a.threads} threads")
    print(_common.table(rows, ["process", "peak RSS GB", "anon GB", "file GB"]))
    print(f"C bridge peak RSS {result['C bridge']:.2f} GB with the F16 mmproj, "
          f"{result['C bridge, mmproj Q8_0']:.2f} GB with Q8_0 (goal <= 3.0 GB)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
