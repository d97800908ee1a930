"""Time to first token with images: our runtime (default encoder) vs llama.cpp's llama-mtmd-cli.

Issue 14's goals, printed as ratios in one run (so a busy machine slows both sides alike):
- TTFT of one 1344x1344 photo (mtmd: overview + 9 slices) ours / llama-mtmd-cli <= 0.6, and of one
  448x448 image; both sides get the same F16 projector FILE (ours may use it in another storage
  type: that is the default encoder's choice, printed), the same threads, n_ctx, batch and prompt.
- question -> first token when the image was prefilled ahead (MiniCPMV.prefill) <= 0.05 of our
  cold TTFT.
- turn 2 (a follow-up on the same image) as a fraction of turn 1.

TTFT = image encode + prompt prefill up to the first sampled token, model load excluded:
llama-mtmd-cli's from its own log timestamps ("encoding mtmd batch") to its first stdout byte,
ours from the runtime's request start (includes image preprocessing and tokenisation).

  python bench/ttft.py --layers 4 --quant Q4_K_M --threads 2 --tokens 16 --repeat 2
  python bench/ttft.py --text T.gguf --mmproj M.gguf --tools-dir DIR --threads 16 [--ngl 99 --mmproj-gpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]

import _common  # noqa: E402
import runtime  # noqa: E402  (bench/runtime.py: model preparation, llama-mtmd-cli timing)

PROMPT = runtime.PROMPT
FOLLOW_UP = runtime.FOLLOW_UP

OURS = r"""
import json, sys, time
from PIL import Image
from minicpmv_edge.edge_runtime import MiniCPMV
text, mmproj, image, image_b, n, threads, ngl, mmgpu, opts = sys.argv[1:10]
t = time.perf_counter()
m = MiniCPMV(text, mmproj, n_ctx=4096, n_threads=int(threads), n_batch=512, n_gpu_layers=int(ngl),
             mmproj_gpu=mmgpu == "1", **json.loads(opts))
load_ms = (time.perf_counter() - t) * 1e3
g = dict(temperature=0, repeat_penalty=1.0, max_tokens=int(n))
img = Image.open(image)
msgs = [{"role": "user", "content": [img, %r]}]
r1 = m.chat(msgs, **g)
msgs += [{"role": "assistant", "content": r1.text}, {"role": "user", "content": %r}]
r2 = m.chat(msgs, **g)
# prefill ahead: another image of the same size (the first is in the embedding cache), put in the KV
# cache before the question; then the question alone
m.reset()
img_b = Image.open(image_b)
pre = m.prefill([{"role": "user", "content": [img_b]}])
r3 = m.chat([{"role": "user", "content": [img_b, %r]}], **g)
print("RESULT " + json.dumps({"t1": r1.timings.as_dict(), "t2": r2.timings.as_dict(), "t3": r3.timings.as_dict(),
                              "prefill": pre.as_dict(), "encoder": m.encoder.describe(), "load_ms": load_ms}))
""" % (PROMPT, FOLLOW_UP, PROMPT)


def photo(work: Path, side: int, seed: int) -> Path:
    """A smooth synthetic photo (gradients + shapes): compresses like a photo, slices like one."""
    import numpy as np
    from PIL import Image

    p = work / f"photo-{side}-{seed}.png"
    if not p.exists():
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
        rgb = np.stack([x * 255, y * 255, (1 - x) * 128 + rng.uniform(0, 127)], -1)
        for _ in range(12):
            cx, cy, r = rng.uniform(0, 1, 3) * (1, 1, 0.2)
            mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
            rgb[mask] = rng.uniform(0, 255, 3)
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(p)
    return p


def run_ours(text: Path, mmproj: Path, image: Path, image_b: Path, n: int, threads: int, ngl: int = 0,
             mmproj_gpu: bool = False, options: dict | None = None, env: dict | None = None) -> dict:
    cmd = [sys.executable, "-c", OURS, str(text), str(mmproj), str(image), str(image_b), str(n), str(threads),
           str(ngl), "1" if mmproj_gpu else "0", json.dumps(options or {})]
    r = _common.run_measured(cmd, tail_chars=40000, env=env)
    line = next((x for x in r.stdout_tail.splitlines() if x.startswith("RESULT ")), None)
    if not r.ok or line is None:
        raise RuntimeError(f"our runtime failed:\n{r.stdout_tail[-3000:]}")
    d = json.loads(line[7:])
    t1, t2, t3 = d["t1"], d["t2"], d["t3"]
    return {"encode_ms": sum(t1["image_encode_ms"]), "ttft_ms": t1["ttft_ms"], "ttft2_ms": t2["ttft_ms"],
            "ahead_ms": t3["ttft_ms"], "ahead_evaluated": t3["prompt_tokens_evaluated"],
            "prefill_ms": d["prefill"]["ms"], "decode_tok_s": t1["decode_tok_s"],
            "prompt_tokens": t1["prompt_tokens"], "turn2_evaluated": t2["prompt_tokens_evaluated"],
            "encoder": d["encoder"], "load_ms": d["load_ms"], "peak_rss_mb": r.maxrss_bytes / 2**20}


def run_cli(binary: Path, text: Path, mmproj: Path, image: Path, n: int, threads: int, ngl: int = 0,
            mmproj_gpu: bool = False, env: dict | None = None) -> dict:
    extra = ["-ngl", str(ngl)] + ([] if mmproj_gpu else ["--no-mmproj-offload"])
    return runtime.run_mtmd_cli(binary, text, mmproj, image, n, threads, extra=extra, env=env)


def measure(text: Path, mmproj: Path, cli: Path, work: Path, sizes: list[int], n: int, threads: int, repeat: int,
            ngl: int = 0, mmproj_gpu: bool = False, options: dict | None = None, env: dict | None = None,
            log=print) -> list[dict]:
    rows = []
    for side in sizes:
        img, img_b = photo(work, side, 1), photo(work, side, 2)
        theirs, ours = [], []
        for _ in range(repeat):  # interleaved, so drifting load hits both
            theirs.append(run_cli(cli, text, mmproj, img, n, threads, ngl, mmproj_gpu, env))
            ours.append(run_ours(text, mmproj, img, img_b, n, threads, ngl, mmproj_gpu, options, env))
            log(f"  {side}x{side}: llama-mtmd-cli TTFT {theirs[-1]['ttft_ms']:.0f} ms, ours {ours[-1]['ttft_ms']:.0f} "
                f"ms ({ours[-1]['encoder']}), ahead {ours[-1]['ahead_ms']:.0f} ms")
        t = min(theirs, key=lambda d: d["ttft_ms"])
        o = min(ours, key=lambda d: d["ttft_ms"])
        o["ahead_ms"] = min(d["ahead_ms"] for d in ours)
        o["ttft2_ms"] = min(d["ttft2_ms"] for d in ours)
        rows.append({"side": side, "theirs": t, "ours": o, "runs": {"theirs": theirs, "ours": ours}})
    return rows


def report(rows: list[dict], header: str) -> str:
    table = []
    for r in rows:
        t, o = r["theirs"], r["ours"]
        table.append([f"{r['side']}x{r['side']}", f"{t['encode_ms']:.0f}", f"{t['ttft_ms']:.0f}", f"{o['encode_ms']:.0f}",
                      f"{o['ttft_ms']:.0f}", f"{o['ttft_ms'] / t['ttft_ms']:.3f}", f"{o['ahead_ms']:.0f}",
                      f"{o['ahead_ms'] / o['ttft_ms']:.3f}", f"{o['ttft2_ms'] / o['ttft_ms']:.3f}"])
    lines = [header, _common.table(table, ["image", "cli encode ms", "cli TTFT ms", "ours encode ms", "ours TTFT ms",
                                           "TTFT ours/cli", "ahead: question->token ms", "ahead/cold",
                                           "turn 2/turn 1"])]
    lines.append(f"our encoder: {rows[0]['ours']['encoder']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "minicpmv-bench"))
    ap.add_argument("--layers", type=int, default=4, help="text layers of the synthetic 4.5-shaped model (real: 36)")
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--text", help="a text GGUF (instead of the synthetic model)")
    ap.add_argument("--mmproj", help="its F16 projector")
    ap.add_argument("--tools-dir", help="folder with llama-mtmd-cli (default: build it from the installed source)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--sizes", default="448,1344")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--ngl", type=int, default=0)
    ap.add_argument("--mmproj-gpu", action="store_true")
    ap.add_argument("--options", default="{}", help="LoadOptions for ours as JSON, e.g. '{\"mmproj_type\": \"f16\"}'")
    ap.add_argument("--json", help="write all numbers here")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.text:
        text, mmproj = Path(a.text), Path(a.mmproj)
    else:
        text, mmproj = runtime.prepare_model(work, a.layers, a.quant)
    cli = Path(a.tools_dir) / "llama-mtmd-cli" if a.tools_dir else runtime.llama_tools.build(["llama-mtmd-cli"])["llama-mtmd-cli"]
    sizes = [int(s) for s in a.sizes.split(",")]
    rows = measure(text, mmproj, cli, work, sizes, a.tokens, a.threads, a.repeat, a.ngl, a.mmproj_gpu,
                   json.loads(a.options))
    m = _common.machine_description(work)
    header = (f"model: {text.name} + {mmproj.name}; {a.threads} threads, n_ctx 4096, batch 512, {a.tokens} tokens, "
              f"-ngl {a.ngl}{', projector on GPU' if a.mmproj_gpu else ''}; best of {a.repeat}\n"
              f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores; load average {_common.loadavg():.1f}")
    print(report(rows, header))
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": m, "args": vars(a), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
