"""C bridge vs llama-mtmd-cli on one GGUF pair: decode tok/s, time to first token, peak RSS.

    python bench/bridge.py                 # 4.0-shaped synthetic model (scaled, see --hidden), Q4_K_M
    python bench/bridge.py --tiny          # the ~1 MB test fixture (checks the plumbing only)
    python bench/bridge.py --record        # also append a section to BENCHMARKS.md

Both sides load the same files with the same ggml kernels: llama-mtmd-cli is built from the
llama-cpp-python sdist (same commit) into ~/.cache/minicpmv-edge, target llama-mtmd-cli only,
and run with LD_LIBRARY_PATH pointing at llama-cpp-python's libs, which the bridge links too.
Each run is a fresh process; TTFT is measured from before model load to the first reply byte
(load + image encode + prefill). Decode: wall-clock tok/s between the first and last reply
piece on both sides (the CLI's stdout stream, run with --ignore-eos; sampling included).
Goal: bridge >= 0.98x the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# the project's packages first, bench helpers last: bench/convert.py and bench/quantize.py
# must not shadow the `convert` and `quantize` packages
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]
sys.path.insert(0, str(ROOT / "mobile_bridge" / "python"))
import mcv_bridge  # noqa: E402

PROMPT = "Describe the image in detail."


def build_cli() -> Path:
    import llama_tools  # bench/llama_tools.py: the one place llama.cpp's CLI tools are built

    return llama_tools.build(["llama-mtmd-cli"])["llama-mtmd-cli"]


def make_model(work: Path, tiny: bool, hidden: int, layers: int) -> tuple[str, str, str]:
    from minicpmv_edge.fixtures import families as F
    from minicpmv_edge.fixtures import make_checkpoint
    from minicpmv_edge.convert import convert

    tag = "tiny" if tiny else f"h{hidden}-l{layers}"
    if not tiny:  # MiniCPM4-shaped text: GQA 16/2 heads of 64, SwiGLU 2.75x
        F.HIDDEN, F.LAYERS, F.HEADS, F.HEAD_DIM, F.KV_HEADS, F.INTER = hidden, layers, hidden // 64, 64, 2, hidden * 11 // 4
        F.LONGROPE_FACTORS = [round(8.0 ** (i / (F.HEAD_DIM // 2 - 1)), 6) for i in range(F.HEAD_DIM // 2)]
    out = work / f"minicpmv-4.0-{tag}"
    q = out / "text-q4_k_m.gguf"
    res = None
    if not q.exists():
        res = convert(make_checkpoint("minicpmv-4.0", work / f"ckpt-{tag}", seed=0), out)
        from minicpmv_edge.quantize.llama import quantize_text

        quantize_text(res.text_path, q, "Q4_K_M")
    mm = next(out.glob("*-mmproj-*.gguf"))
    from PIL import Image

    img = work / "bench-448.png"
    if not img.exists():
        import numpy as np

        Image.fromarray((np.random.RandomState(1).rand(448, 448, 3) * 255).astype("uint8")).save(img)
    return str(q), str(mm), str(img)


def child_bridge(args) -> None:
    """Runs in a fresh process: load, one image, generate; prints JSON."""
    t0 = time.perf_counter()
    build = mcv_bridge.build("plain")  # cached: re-configures and finds nothing to rebuild
    b = mcv_bridge.Bridge(mcv_bridge.load_library(build / "libminicpmv_edge_bridge.so"))
    b.lib.mcv_set_log_callback(None, None)
    m = b.load(args.text, args.mmproj, n_ctx=4096, n_threads=args.threads)
    s = b.session(m)
    b.check(b.lib.mcv_session_add_image_file(s, args.image.encode()), s)
    b.check(b.lib.mcv_session_add_text(s, 1, PROMPT.encode()), s)
    first = []
    b.generate(s, max_tokens=args.n, on_piece=lambda p: first.append(time.perf_counter()) and False)
    st = b.stats(s)
    print(json.dumps({"ttft_ms": (first[0] - t0) * 1000 if first else None, "decode_tok_s": st.decode_tok_per_s,
                      "n_decode": st.n_decode_tokens, "encode_ms": st.image_encode_ms,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_bridge(args) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", "--text", args.text, "--mmproj", args.mmproj,
                        "--image", args.image, "-n", str(args.n), "--threads", str(args.threads)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_cli(exe: Path, args) -> dict:
    cmd = [str(exe), "-m", args.text, "--mmproj", args.mmproj, "--image", args.image, "-p", PROMPT,
           "-n", str(args.n), "-t", str(args.threads), "-c", "4096", "--temp", "0", "--no-warmup",
           "--ignore-eos"]
    if mcv_bridge_amx():
        cmd.append("--no-repack")  # what the bridge does on AMX CPUs (llama.cpp 0c1e570 bug)
    env = dict(os.environ, LD_LIBRARY_PATH=str(mcv_bridge.llama_lib_dir()))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    ttft = t_last = None
    while True:
        c = p.stdout.read(1)
        if not c:
            break
        if c.strip():
            t_last = time.perf_counter()
            if ttft is None:
                t_first, ttft = t_last, (t_last - t0) * 1000
    err = p.stderr.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        raise RuntimeError(err[-2000:])
    # mtmd-cli prints no llama_perf summary: decode rate from its stdout stream (--ignore-eos: n tokens)
    rate = (args.n - 1) / (t_last - t_first) if ttft is not None and t_last > t_first else None
    return {"ttft_ms": ttft, "decode_tok_s": rate, "n_decode": args.n, "rss_mb": ru.ru_maxrss / 1024}


def mcv_bridge_amx() -> bool:
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--text"), ap.add_argument("--mmproj"), ap.add_argument("--image")
    ap.add_argument("-n", type=int, default=64, help="tokens to generate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="use the ~1 MB fixture instead")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    if args.child:
        return child_bridge(args)
    mcv_bridge.build("plain")
    exe = build_cli()
    if not args.text:
        args.text, args.mmproj, args.image = make_model(mcv_bridge.CACHE / "bench", args.tiny, args.hidden, args.layers)
    bridge, cli = [], []
    for _ in range(args.runs):  # interleaved, so drifting machine load hits both sides alike
        bridge.append(run_bridge(args))
        cli.append(run_cli(exe, args))
    res = {k: {f: median([r[f] for r in rs]) for f in ("ttft_ms", "decode_tok_s", "rss_mb")}
           for k, rs in (("bridge", bridge), ("cli", cli))}
    ratio = res["bridge"]["decode_tok_s"] / res["cli"]["decode_tok_s"] if res["cli"]["decode_tok_s"] else None
    ttft_ratio = res["cli"]["ttft_ms"] / res["bridge"]["ttft_ms"] if res["bridge"]["ttft_ms"] else None
    size_mb = Path(args.text).stat().st_size / 2**20 + Path(args.mmproj).stat().st_size / 2**20
    line = (f"decode: bridge {res['bridge']['decode_tok_s']:.1f} tok/s vs llama-mtmd-cli {res['cli']['decode_tok_s']:.1f}"
            f" -> {ratio:.3f}x (goal >= 0.98); TTFT bridge {res['bridge']['ttft_ms']:.0f} ms vs cli "
            f"{res['cli']['ttft_ms']:.0f} ms (cli/bridge {ttft_ratio:.2f}); peak RSS bridge "
            f"{res['bridge']['rss_mb']:.0f} MiB (incl. Python) vs cli {res['cli']['rss_mb']:.0f} MiB")
    print(line)
    print(json.dumps({"bridge": bridge, "cli": cli}, indent=1))
    if args.record:
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as f:
            f.write(f"\n## C bridge vs llama-mtmd-cli ({time.strftime('%Y-%m-%d')})\n\n"
                    f"Model: `{Path(args.text).name}` + `{Path(args.mmproj).name}` ({size_mb:.0f} MiB), one 448x448 "
                    f"image, n_ctx 4096, {args.n} tokens, {args.threads} threads, median of {args.runs} fresh "
                    f"processes, llama.cpp 0c1e570 (llama-cpp-python {mcv_bridge.llama_cpp_version()}).\n"
                    f"Command: `python bench/bridge.py{' --tiny' if args.tiny else ''} --record`\n\n- {line}\n")


if __name__ == "__main__":
    main()
