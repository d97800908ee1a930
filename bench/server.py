"""Throughput and latency of `minicpmv-edge serve` beside llama.cpp's own `llama-server`.

Both serve the same GGUF pair; each gets the same request (one image as a data URI,
the same prompt, the same max_tokens, temperature 0, repeat_penalty 1) from 1, 4 and
8 concurrent clients (threads with httpx). Per level: requests/s over the wall
time, p50 / p95 of per-request latency, mean completion tokens (so that runs that
stopped early at EOS are visible). Both servers are warmed up first (two requests),
so the image embedding is cached by ours and by llama-server's prompt cache alike.

    python bench/server.py                          # tiny 4.5 fixture, builds it if needed
    python bench/server.py --folder out/v45 --requests 16 --max-tokens 64
    python bench/server.py --build-llama-server     # cmake-build llama-server from the sdist first

llama-server is built from the llama.cpp that llama-cpp-python vendors (same source
as our runtime): see `build_llama_server`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# the project's packages first, bench helpers last: bench/convert.py and bench/quantize.py
# must not shadow the `convert` and `quantize` packages
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]

from bench._common import loadavg, machine_description  # noqa: E402

LLAMA_VERSION = "0.3.36"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "minicpmv-edge"


def build_llama_server(*_args, **_kw) -> Path:
    import llama_tools  # bench/llama_tools.py: the one place llama.cpp's CLI tools are built

    return llama_tools.build(["llama-server"])["llama-server"]


def fixture_folder(family: str) -> Path:
    out = CACHE / "bench-server" / f"out-{family}"
    if not (out / "manifest.json").is_file():
        from minicpmv_edge.convert import convert
        from minicpmv_edge.fixtures import make_checkpoint

        convert(make_checkpoint(family, CACHE / "bench-server" / f"ckpt-{family}", seed=0), out, outtype="f16")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not healthy after {timeout:.0f} s")


def _image_uri(size: int) -> str:
    import numpy as np
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def run_level(url: str, body: dict, clients: int, total: int) -> dict:
    import httpx

    lat: list[float] = []
    toks: list[int] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(total))

    def client():
        with httpx.Client(timeout=600) as hc:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                t0 = time.perf_counter()
                r = hc.post(url + "/v1/chat/completions", json=body)
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code != 200:
                        errors[0] += 1
                        continue
                    lat.append(dt)
                    toks.append(r.json()["usage"]["completion_tokens"])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))] * 1e3 if lat else float("nan")  # noqa: E731
    return {"clients": clients, "requests": len(lat), "errors": errors[0], "wall_s": round(wall, 3),
            "req_s": round(len(lat) / wall, 2), "p50_ms": round(q(0.50), 1), "p95_ms": round(q(0.95), 1),
            "completion_tokens_mean": round(statistics.mean(toks), 1) if toks else 0}


def bench_server(name: str, cmd: list[str], url: str, body: dict, levels: list[int], total: int) -> list[dict]:
    import httpx

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(url, proc)
        for _ in range(2):  # warm-up: graph allocation, image embedding / prompt cache
            r = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
            r.raise_for_status()
        rows = []
        for c in levels:
            row = {"server": name, **run_level(url, body, c, total)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, help="converted folder (default: the tiny 4.5 fixture, built once)")
    ap.add_argument("--family", default="minicpmv-4.5")
    ap.add_argument("--llama-server", type=Path, help="llama-server binary (default: built by bench/llama_tools.py)")
    ap.add_argument("--build-llama-server", action="store_true", help="build it from the sdist when missing")
    ap.add_argument("--llama-parallel", default="1,4", help="llama-server -np values to run (comma list)")
    ap.add_argument("--levels", default="1,4,8", help="concurrent clients")
    ap.add_argument("--requests", type=int, default=24, help="requests per level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("-t", "--threads", type=int, default=1,
                    help="threads per server (default 1: a tiny model gains nothing from more, and on a busy "
                         "machine ggml's spinning barriers make 2 threads far slower)")
    ap.add_argument("--json", type=Path, help="also write all rows here")
    args = ap.parse_args(argv)

    folder = args.folder or fixture_folder(args.family)
    from minicpmv_edge.manifest import Manifest

    m = Manifest.load(folder)
    text, mmproj = m.path_of(folder, "text"), m.path_of(folder, "mmproj")
    levels = [int(x) for x in args.levels.split(",")]
    body = {"model": "bench", "max_tokens": args.max_tokens, "temperature": 0, "repeat_penalty": 1.0, "seed": 0,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": _image_uri(args.image_size)}},
                {"type": "text", "text": "Describe this image in detail."}]}]}
    print(json.dumps({"machine": machine_description(), "loadavg_1m": loadavg(), "text": str(text), "mmproj": str(mmproj),
                      "max_tokens": args.max_tokens, "requests_per_level": args.requests,
                      "image": f"{args.image_size}x{args.image_size} PNG data URI", "threads": args.threads}))
    rows = []
    port = _free_port()
    rows += bench_server("minicpmv-edge serve", [sys.executable, "-m", "minicpmv_edge", "serve", str(folder),
                                                 "--port", str(port), "--model-name", "bench", "-t",
                                                 str(args.threads), "--max-queue", "64"],
                         f"http://127.0.0.1:{port}", body, levels, args.requests)
    exe = args.llama_server or build_llama_server()
    if not Path(exe).is_file():
        print(f"llama-server not found at {exe}: pass --build-llama-server", file=sys.stderr)
    else:
        for np_ in [int(x) for x in args.llama_parallel.split(",")]:
            port = _free_port()
            rows += bench_server(f"llama-server -np {np_}", [str(exe), "-m", str(text), "--mmproj", str(mmproj),
                                                            "--host", "127.0.0.1", "--port", str(port),
                                                            "-t", str(args.threads), "-c", str(4096 * np_),
                                                            "-np", str(np_), "--no-webui"],
                                 f"http://127.0.0.1:{port}", body, levels, args.requests)
    print("\n| server | clients | req/s | p50 ms | p95 ms | completion tok (mean) | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['clients']} | {r['req_s']} | {r['p50_ms']} | {r['p95_ms']} "
              f"| {r['completion_tokens_mean']} | {r['errors']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
