"""Serving several clients: `minicpmv-edge serve --parallel N` beside llama.cpp's `llama-server -np N`.

Both serve the same GGUF pair from the same llama.cpp source (llama-server is built from the
llama-cpp-python sdist our runtime links: bench/llama_tools.py). Every request carries its own
image (a different random PNG per request, the same set for both servers, so neither can answer from
a cache), the same question, temperature 0, repeat_penalty 1 and `ignore_eos` with a fixed
`max_tokens` (every answer has the same length on both). At each level of concurrent clients
(threads with httpx) it measures the aggregate completion tokens per second over the level's wall
time, and the p50 / p95 of per-request latency; one table puts ours and llama-server side by side
with the ratios (goal: aggregate throughput >= 1.0x llama-server's at 4 and 8 clients, p95 latency
<= 1.1x).

The default model has the real MiniCPM-V 4.6 shapes (Qwen3.5-0.8B text: hidden 1024, 24 layers
3:1 linear:full attention, 8/2 heads of 256, FFN 3584, vocab 248094, tied embeddings; SigLIP2-400M,
27 layers, merger to 64 tokens per 448 slice) with random weights, converted by our converter, the
text quantized to Q4_K_M, the projector F16. Random weights do not change the cost of a token.

    python bench/server.py                               # real-shape 4.6, Q4_K_M; builds what it needs
    python bench/server.py --parallel 4,8 --llama-parallel 4,8 --levels 1,4,8 --requests 8 --max-tokens 48
    python bench/server.py --folder out/v46 --quant none # a converted folder instead
    python bench/server.py --text text-Q4_K_M.gguf --mmproj mmproj-f16.gguf   # a pair as it is
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# the project's packages first, bench helpers last: bench/convert.py and bench/quantize.py
# must not shadow the `convert` and `quantize` packages
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]

from bench._common import loadavg, machine_description  # noqa: E402

REAL_46 = Path(os.environ.get("MINICPMV_EDGE_REAL_CHECKPOINTS", ROOT.parent / "shared" / "reference" /
                              "real-checkpoints")) / "minicpm-v-4.6" / "config.json"
QUESTION = "Describe this image in detail."


# --- the model -------------------------------------------------------------------------------------
def _bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def real_46_checkpoint(work: Path, log=print) -> Path:
    """A MiniCPM-V 4.6 checkpoint with the real shapes (config.json of openbmb/MiniCPM-V-4.6) and
    random bf16 weights, written by bench/convert.py's safetensors writer; tokenizer files and
    token ids from the tiny 4.6 fixture (its vocabulary is padded to the real 248094 rows)."""
    conv = _bench_module("convert")
    d = work / "v46-real"
    if (d / ".bench-complete").exists():
        return d
    fx = conv._fixture(work, "minicpmv-4.6")
    real = json.loads(REAL_46.read_text())
    cfg = json.loads((fx / "config.json").read_text())
    shape_keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                  "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
                  "linear_conv_kernel_dim", "num_hidden_layers", "layer_types", "full_attention_interval",
                  "vocab_size", "partial_rotary_factor", "tie_word_embeddings", "attn_output_gate")
    cfg["text_config"].update({k: real["text_config"][k] for k in shape_keys if k in real["text_config"]})
    cfg["text_config"]["rope_parameters"].update(real["text_config"]["rope_parameters"])
    cfg["text_config"]["rope_parameters"].setdefault("mrope_section", [11, 11, 10])
    cfg["vision_config"].update({k: v for k, v in real["vision_config"].items() if k != "model_type"})
    for k in ("insert_layer_id", "tie_word_embeddings"):
        if k in real:
            cfg[k] = real[k]
    tensors = conv.tensors_46(cfg)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for f in fx.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, d / f.name)
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    conv.write_sharded(d, tensors)
    (d / ".bench-complete").write_text("ok\n")
    log(f"wrote {d} ({conv.nbytes(tensors) / 1e9:.2f} GB, {len(tensors)} tensors)")
    return d


def _real_tokens_only(path: Path) -> None:
    """The vocabulary has 248094 rows but the fixture tokenizer far fewer: zero the rows of the
    padding ids in the (tied) output matrix, so that the random model samples real tokens, as a
    real model does (a padding id prints nothing). In place, before quantization; no cost changes."""
    from gguf import GGUFReader, TokenType

    r = GGUFReader(path, "r+")
    types = r.fields["tokenizer.ggml.token_type"]
    n_real = sum(int(types.parts[i][0]) != TokenType.UNUSED for i in types.data)
    out = next((t for t in r.tensors if t.name == "output.weight"), None) or \
        next(t for t in r.tensors if t.name == "token_embd.weight")
    out.data[n_real:] = 0
    r.data.flush()


def real_46_pair(work: Path, quant: str | None, log=print) -> tuple[Path, Path]:
    from minicpmv_edge.convert import convert
    from minicpmv_edge.manifest import Manifest

    out = work / "gguf-v46-real"
    if not (out / "manifest.json").exists():
        ckpt = real_46_checkpoint(work, log)
        log(f"converting {ckpt} -> {out}")
        res = convert(ckpt, out)
        _real_tokens_only(Path(res.text_path))
    m = Manifest.load(out)
    text, mmproj = Path(m.path_of(out, "text")), Path(m.path_of(out, "mmproj"))
    if quant:
        q = out / f"text-{quant}.gguf"
        if not q.exists():
            log(f"quantizing the text model to {quant}")
            from minicpmv_edge.quantize.llama import quantize_text

            quantize_text(text, q, quant)
        text = q
    return text, mmproj


def fixture_pair(work: Path, family: str) -> tuple[Path, Path]:
    from minicpmv_edge.convert import convert
    from minicpmv_edge.fixtures import make_checkpoint
    from minicpmv_edge.manifest import Manifest

    out = work / f"out-{family}"
    if not (out / "manifest.json").is_file():
        convert(make_checkpoint(family, work / f"ckpt-{family}", seed=0), out, outtype="f16")
    m = Manifest.load(out)
    return Path(m.path_of(out, "text")), Path(m.path_of(out, "mmproj"))


def folder_pair(folder: Path, work: Path, quant: str | None) -> tuple[Path, Path]:
    from minicpmv_edge.manifest import Manifest

    m = Manifest.load(folder)
    text, mmproj = Path(m.path_of(folder, "text")), Path(m.path_of(folder, "mmproj"))
    if quant:
        q = work / f"{text.stem}-{quant}.gguf"
        if not q.exists():
            from minicpmv_edge.quantize.llama import quantize_text

            quantize_text(text, q, quant)
        text = q
    return text, mmproj


# --- the load ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 900) -> None:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not healthy after {timeout:.0f} s")


def image_uri(seed: int, size: int) -> str:
    import numpy as np
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def body(seed: int, args) -> dict:
    if args.no_image:  # decode-bound: a different short question per request, no image to encode
        content = f"Request {seed}: {QUESTION.replace('this image', 'a harbour at dawn')}"
    else:
        content = [{"type": "image_url", "image_url": {"url": image_uri(seed, args.image_size)}},
                   {"type": "text", "text": QUESTION}]
    return {"model": "bench", "max_tokens": args.max_tokens, "temperature": 0, "repeat_penalty": 1.0, "seed": 0,
            "ignore_eos": True, "messages": [{"role": "user", "content": content}]}


def run_level(url: str, bodies: list[dict], clients: int) -> dict:
    import httpx

    lat: list[float] = []
    toks: list[int] = []
    prompts: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = iter(bodies)

    def client():
        with httpx.Client(timeout=3600) as hc:
            while True:
                with lock:
                    b = next(todo, None)
                if b is None:
                    return
                t0 = time.perf_counter()
                r = hc.post(url + "/v1/chat/completions", json=b)
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    lat.append(dt)
                    toks.append(r.json()["usage"]["completion_tokens"])
                    prompts.append(r.json()["usage"]["prompt_tokens"])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))] if lat else float("nan")  # noqa: E731
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "wall_s": round(wall, 2),
            "tok_s": round(sum(toks) / wall, 2), "req_s": round(len(lat) / wall, 3), "p50_s": round(q(0.5), 2),
            "p95_s": round(q(0.95), 2), "completion_tokens_mean": round(statistics.mean(toks), 1) if toks else 0,
            "prompt_tokens_mean": round(statistics.mean(prompts), 1) if prompts else 0,
            "error_sample": errors[:1], "loadavg_1m": loadavg()}


def bench_server(name: str, cmd: list[str], url: str, args, log) -> list[dict]:
    import httpx

    log_file = open(Path(args.work) / f"{name.replace(' ', '_')}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(url, proc)
        # warm-up: one short request (its own image unless --text-warmup: on a crowded machine an image
        # encode of the real-size vision tower takes minutes; both servers are warmed alike)
        warm = body(10**6, args)
        if args.text_warmup:
            warm = {**warm, "max_tokens": 4, "messages": [{"role": "user", "content": QUESTION}]}
        httpx.post(url + "/v1/chat/completions", json=warm, timeout=3600).raise_for_status()
        rows = []
        for c in args.levels:
            # each level its own images (seeded by level and request), the same for every server
            bodies = [body(1000 * c + i, args) for i in range(args.requests)]
            row = {"server": name, **run_level(url, bodies, c)}
            log(json.dumps(row))
            rows.append(row)
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


def side_by_side(rows: list[dict], ours: list[int], theirs: list[int], levels: list[int]) -> str:
    by = {(r["server"], r["clients"]): r for r in rows}
    out = ["| clients | slots | ours tok/s | llama-server tok/s | ratio | ours p50 s | llama p50 s | ours p95 s "
           "| llama p95 s | p95 ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n in sorted(set(ours) & set(theirs)):
        for c in levels:
            a, b = by.get((f"minicpmv-edge --parallel {n}", c)), by.get((f"llama-server -np {n}", c))
            if not a or not b:
                continue
            ratio = a["tok_s"] / b["tok_s"] if b["tok_s"] else float("nan")
            p95 = a["p95_s"] / b["p95_s"] if b["p95_s"] else float("nan")
            out.append(f"| {c} | {n} | {a['tok_s']} | {b['tok_s']} | {ratio:.2f} | {a['p50_s']} | {b['p50_s']} "
                       f"| {a['p95_s']} | {b['p95_s']} | {p95:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, help="a converted folder (default: the real-shape 4.6, built once)")
    ap.add_argument("--fixture", metavar="FAMILY", help="a tiny test fixture instead (e.g. minicpmv-4.5)")
    ap.add_argument("--text", type=Path, help="a text GGUF as it is (with --mmproj; e.g. a real-shape pair built before)")
    ap.add_argument("--mmproj", type=Path, help="the projector GGUF that goes with --text")
    ap.add_argument("--quant", default="Q4_K_M", help="quantize the text model first ('none': as it is)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "minicpmv-bench"))
    ap.add_argument("--llama-server", type=Path, help="llama-server binary (default: built by bench/llama_tools.py)")
    ap.add_argument("--parallel", default="4,8", help="our --parallel values (comma list)")
    ap.add_argument("--llama-parallel", default="4,8", help="llama-server -np values (comma list)")
    ap.add_argument("--levels", default="1,4,8", help="concurrent clients")
    ap.add_argument("--requests", type=int, default=8, help="requests per level (each with its own image)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--ctx", type=int, default=4096, help="context per slot, both servers")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 2, help="threads per server")
    ap.add_argument("--no-image", action="store_true",
                    help="text-only requests (different questions): the decode side of serving, no encodes")
    ap.add_argument("--text-warmup", action="store_true", help="warm each server up with a text-only request")
    ap.add_argument("--json", type=Path, help="also write all rows here")
    args = ap.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",")]
    quant = None if args.quant.lower() == "none" else args.quant
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if bool(args.text) != bool(args.mmproj):
        ap.error("--text and --mmproj go together")
    if args.text:
        text, mmproj = args.text.resolve(), args.mmproj.resolve()
    elif args.folder:
        text, mmproj = folder_pair(args.folder, work, quant)
    elif args.fixture:
        text, mmproj = fixture_pair(work, args.fixture)
    else:
        text, mmproj = real_46_pair(work, quant, log)
    import llama_tools  # bench/llama_tools.py: the one place llama.cpp's tools are built

    exe = args.llama_server or llama_tools.build(["llama-server"])["llama-server"]
    from minicpmv_edge.edge_runtime.engine import cpu_has_amx

    # llama.cpp's weight repacking crashes on this AMX CPU; our runtime turns it off there, so the anchor too
    no_repack = ["--no-repack"] if cpu_has_amx() else []
    log(json.dumps({"machine": machine_description(), "loadavg_1m": loadavg(), "text": str(text),
                    "mmproj": str(mmproj), "max_tokens": args.max_tokens, "requests_per_level": args.requests,
                    "image": "none" if args.no_image else f"{args.image_size}x{args.image_size} PNG, one per request", "threads": args.threads,
                    "ctx_per_slot": args.ctx}))
    rows: list[dict] = []
    ours = [int(x) for x in args.parallel.split(",") if x]
    theirs = [int(x) for x in args.llama_parallel.split(",") if x]
    for n in sorted(set(ours) | set(theirs)):  # ours and theirs at each slot count, back to back
        if n in ours:
            port = _free_port()
            rows += bench_server(f"minicpmv-edge --parallel {n}", [
                sys.executable, "-m", "minicpmv_edge", "serve", "-m", str(text), "--mmproj", str(mmproj),
                "--port", str(port), "--model-name",
                "bench", "-t", str(args.threads), "-c", str(args.ctx), "--parallel", str(n), "--max-queue", "64",
                "--max-tokens-limit", str(max(4096, args.max_tokens)),
                "--request-timeout", "36000"], f"http://127.0.0.1:{port}", args, log)
        if n in theirs:
            port = _free_port()
            rows += bench_server(f"llama-server -np {n}", [
                str(exe), "-m", str(text), "--mmproj", str(mmproj), "--host", "127.0.0.1", "--port", str(port),
                "-t", str(args.threads), "-c", str(args.ctx * n), "-np", str(n), "--no-webui", *no_repack],
                f"http://127.0.0.1:{port}", args, log)
    print("\n| server | clients | completion tok/s | req/s | p50 s | p95 s | prompt tokens | tokens (mean) | errors "
          "| load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['clients']} | {r['tok_s']} | {r['req_s']} | {r['p50_s']} | {r['p95_s']} "
              f"| {r['prompt_tokens_mean']} | {r['completion_tokens_mean']} | {r['errors']} | {r['loadavg_1m']} |")
    print("\n" + side_by_side(rows, ours, theirs, args.levels))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
