"""Real-size MiniCPM-V 4.5 (36 layers, Qwen3-8B shapes) and 4.6 (shapes of the real checkpoint) on the
lent GPU machine: decode, TTFT (448^2 and 1344^2), turn 2, prefill ahead, peak RSS, against
llama-mtmd-cli / llama-bench built from the same llama.cpp, on 16 CPU threads and with all layers
on the GPU.

Three steps, so the part that needs torch/transformers runs here and the GPU machine needs numpy only:

  python bench/device/realsize.py spec SPEC_DIR            # here: configs, small files, tensor lists
  python3 realsize.py make SPEC_DIR WORK                    # there: bf16 checkpoints -> GGUF -> Q4_K_M
  python3 realsize.py measure WORK --tools DIR --out OUT    # there: the tables

Weights are random bf16 N(0, 0.02) (bench/convert.py's writer); the tokenizer is the tiny fixture's,
whose padding rows of the output projection are zeroed so that the model samples real tokens
(bench/runtime.py). llama-mtmd-cli and llama-bench run with the same threads, n_ctx 4096, batch 512.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() not in (BENCH, HERE)] + [str(BENCH)]

REAL_46 = Path(os.environ.get("MINICPMV_EDGE_SHARED", BENCH.parent.parent / "shared")) / "reference" / "real-checkpoints" / "minicpm-v-4.6" / "config.json"


def _convert_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_convert", BENCH / "convert.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- spec (here)

def spec(out: Path, real46: Path) -> None:
    cb = _convert_bench()
    work = out / "_fixtures"
    for name, family, layers in (("v45-full", "4.5", 36), ("v46-full", "4.6", None)):
        fx = cb._fixture(work, f"minicpmv-{family}")
        if family == "4.5":
            cfg = cb.config_45(fx, layers)
            tensors = cb.tensors_45(cfg)
        else:
            cfg = json.loads((fx / "config.json").read_text())
            real = json.loads(Path(real46).read_text())
            for k in ("text_config", "vision_config"):
                cfg[k].update({kk: vv for kk, vv in real[k].items() if kk not in ("model_type",)})
            cfg["text_config"]["mtp_num_hidden_layers"] = 0
            cfg["insert_layer_id"] = real.get("insert_layer_id", 6)
            cfg["tie_word_embeddings"] = cfg["text_config"]["tie_word_embeddings"] = True
            tensors = cb.tensors_46(cfg)
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for f in fx.iterdir():
            if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
                shutil.copy(f, d / f.name)
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
        (d / "tensors.json").write_text(json.dumps(tensors))
        print(f"{name}: {len(tensors)} tensors, {sum(2 * math.prod(s) for _, s in tensors) / 1e9:.2f} GB bf16")
    shutil.rmtree(work)


# ----------------------------------------------------------------------------- make (there)

def make(spec_dir: Path, work: Path, names: list[str], stage: str = "all", quant: str = "Q4_K_M", log=print) -> None:
    """stage "convert": bf16 checkpoint -> F16 GGUF pair (numpy only); "quantize": text -> Q4_K_M (llama.cpp)."""
    cb = _convert_bench()
    for name in names:
        gg = work / name
        done = gg / "done.json"
        if done.exists():
            log(f"{name}: ready")
            continue
        if stage in ("convert", "all") and not (gg / "manifest.json").exists():
            _convert(cb, spec_dir / name, work, name, log)
        if stage in ("quantize", "all"):
            _quantize(gg, quant, log)


def _convert(cb, src: Path, work: Path, name: str, log) -> None:
    from minicpmv_edge.convert import convert

    tensors = [(n, tuple(s)) for n, s in json.loads((src / "tensors.json").read_text())]
    ckpt = work / f"{name}-ckpt"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    ckpt.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "tensors.json":
            shutil.copy(f, ckpt / f.name)
    t0 = time.perf_counter()
    cb.write_sharded(ckpt, tensors)
    t1 = time.perf_counter()
    gg = work / name
    convert(ckpt, gg)
    shutil.rmtree(ckpt)
    (gg / "times.json").write_text(json.dumps({"write_s": t1 - t0, "convert_s": time.perf_counter() - t1}))
    log(f"{name}: checkpoint {t1 - t0:.0f} s, converted in {time.perf_counter() - t1:.0f} s")


def _quantize(gg: Path, quant: str, log) -> None:
    from minicpmv_edge.manifest import Manifest
    from minicpmv_edge.quantize.llama import quantize_text

    t0 = time.perf_counter()
    m = Manifest.load(gg)
    text, mmproj = Path(m.path_of(gg, "text")), Path(m.path_of(gg, "mmproj"))
    _zero_padding_rows(text)
    qpath = gg / f"text-{quant}.gguf"
    quantize_text(text, qpath, quant, nthread=os.cpu_count())
    text.unlink()
    times = json.loads((gg / "times.json").read_text()) if (gg / "times.json").exists() else {}
    times.update(quantize_s=time.perf_counter() - t0)
    (gg / "done.json").write_text(json.dumps({"text": str(qpath), "mmproj": str(mmproj), "text_bytes": qpath.stat().st_size,
                                              "mmproj_bytes": mmproj.stat().st_size, **times}))
    log(f"{gg.name}: {quant} in {time.perf_counter() - t0:.0f} s")


def _zero_padding_rows(path: Path) -> None:
    """bench/runtime.py's trick, for tied embeddings too: the tiny tokenizer's padding ids get zero
    output rows, so the random model samples real tokens."""
    from gguf import GGUFReader, TokenType

    r = GGUFReader(path, "r+")
    types = r.fields["tokenizer.ggml.token_type"]
    n_real = sum(int(types.parts[i][0]) != TokenType.UNUSED for i in types.data)
    out = next((t for t in r.tensors if t.name == "output.weight"), None)
    out = out or next(t for t in r.tensors if t.name == "token_embd.weight")
    out.data[n_real:] = 0
    r.data.flush()


# ----------------------------------------------------------------------------- measure (there)

def measure(work: Path, tools: Path, out: Path, names: list[str], threads: int, sizes: list[int], repeat: int,
            tokens: int, gpu: bool, deadline: float, log=print) -> dict:
    """Resumable: what an earlier call on this machine measured (work/realsize.json) is kept."""
    import _common
    import ttft

    state = work / "realsize.json"
    results = json.loads(state.read_text()) if state.exists() else \
        {"machine": _common.machine_description(str(work)), "threads": threads, "models": {}}
    cpu_env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # CPU numbers: the GPU hidden from both sides

    def save():
        state.write_text(json.dumps(results, indent=1, default=str))
        shutil.copy(state, out / "realsize.json")

    for name in names:
        if not (work / name / "done.json").exists():
            log(f"{name}: not made")
            continue
        info = json.loads((work / name / "done.json").read_text())
        text, mmproj = Path(info["text"]), Path(info["mmproj"])
        r = results["models"].setdefault(name, {"files": info})
        steps = []
        if gpu:  # the GPU steps first: they are short
            steps += [("gpu_decode", lambda: _decode(tools, text, mmproj, threads, 99, None)),
                      ("gpu_ttft", lambda: ttft.measure(text, mmproj, tools / "llama-mtmd-cli", work, sizes, tokens,
                                                        threads, 1, ngl=99, mmproj_gpu=True, log=log))]
        steps += [("cpu_ttft", lambda: ttft.measure(text, mmproj, tools / "llama-mtmd-cli", work, sizes, tokens, threads,
                                                    repeat, env=cpu_env, log=log)),
                  ("cpu_decode", lambda: _decode(tools, text, mmproj, threads, 0, cpu_env)),
                  ("cpu_repack", lambda: _repack_cost(tools, text, threads, cpu_env))]
        for key, fn in steps:
            if key in r:
                continue
            if time.time() > deadline:
                log(f"{name} {key}: no time left in this call")
                continue
            try:
                r[key] = fn()
            except Exception as exc:  # noqa: BLE001 - one failed step must not lose the others
                r[key + "_error"] = str(exc)[-3000:]
                log(f"{name} {key} FAILED: {str(exc)[-600:]}")
                continue
            if key.endswith("ttft"):
                print(ttft.report(r[key], f"{name} {key}"), flush=True)
            else:
                log(f"{name} {key}: {r[key]}")
            save()
    save()
    return results


def _repack_cost(tools: Path, text: Path, threads: int, env) -> dict:
    """llama-bench with llama.cpp's weight repacking (AMX buffers on this CPU) on and off: what the old
    blanket AMX workaround cost here."""
    import subprocess

    out = {}
    for rp in (1, 0):
        p = subprocess.run([str(tools / "llama-bench"), "-m", str(text), "-p", "512", "-n", "64", "-t", str(threads),
                            "-ngl", "0", "-r", "2", "--repack", str(rp), "-o", "json"], capture_output=True, text=True,
                           env=env)
        try:
            rows = json.loads(p.stdout[p.stdout.index("["):])
            out[f"repack{rp}"] = {("pp512" if r["n_prompt"] else "tg64"): r["avg_ts"] for r in rows}
        except (ValueError, KeyError):
            out[f"repack{rp}"] = p.stderr[-800:]
    return out


def _decode(tools: Path, text: Path, mmproj: Path, threads: int, ngl: int, env) -> dict:
    tg = _llama_bench(tools / "llama-bench", text, 128, threads, ngl, env)
    ours = _our_decode(text, mmproj, threads, -1 if ngl else 0, 128, env)
    return {"llama_bench_tg128": tg, "ours_api": ours, "ratio": ours / tg if tg else None}


def _llama_bench(binary: Path, text: Path, n: int, threads: int, ngl: int, env) -> float:
    import subprocess

    p = subprocess.run([str(binary), "-m", str(text), "-p", "0", "-n", str(n), "-t", str(threads), "-ngl", str(ngl),
                        "-r", "3", "-o", "json"], capture_output=True, text=True, env=env)
    try:
        data = json.loads(p.stdout[p.stdout.index("["):])
        return float(data[0]["avg_ts"])
    except (ValueError, KeyError, IndexError):
        print(p.stdout[-1000:], p.stderr[-1500:])
        return float("nan")


DECODE = r"""
import json, sys
from minicpmv_edge.edge_runtime import MiniCPMV
text, mmproj, threads, ngl, n = sys.argv[1:6]
m = MiniCPMV(text, mmproj, n_ctx=4096, n_threads=int(threads), n_gpu_layers=int(ngl))
best = 0.0
for _ in range(3):
    m.reset()
    r = m.chat([{"role": "user", "content": "Tell me a long story."}], temperature=0, repeat_penalty=1.0,
               max_tokens=int(n), ignore_eos=True)
    best = max(best, r.timings.decode_tok_s)
print("DECODE", best)
"""


def _our_decode(text: Path, mmproj: Path, threads: int, ngl: int, n: int, env) -> float:
    import subprocess

    p = subprocess.run([sys.executable, "-c", DECODE, str(text), str(mmproj), str(threads), str(ngl), str(n)],
                       capture_output=True, text=True, env=env)
    line = next((x for x in p.stdout.splitlines() if x.startswith("DECODE ")), None)
    if line is None:
        print(p.stdout[-1000:], p.stderr[-2000:])
        return float("nan")
    return float(line.split()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("spec")
    s.add_argument("out")
    s.add_argument("--real46", default=str(REAL_46))
    mk = sub.add_parser("make")
    mk.add_argument("spec")
    mk.add_argument("work")
    mk.add_argument("--models", default="v46-full,v45-full")
    mk.add_argument("--stage", choices=["convert", "quantize", "all"], default="all")
    me = sub.add_parser("measure")
    me.add_argument("work")
    me.add_argument("--tools", required=True)
    me.add_argument("--out", required=True)
    me.add_argument("--models", default="v46-full,v45-full")
    me.add_argument("--threads", type=int, default=16)
    me.add_argument("--sizes", default="448,1344")
    me.add_argument("--repeat", type=int, default=1)
    me.add_argument("--tokens", type=int, default=16)
    me.add_argument("--gpu", action="store_true")
    me.add_argument("--seconds", type=float, default=1e9, help="stop starting new steps after this long")
    a = ap.parse_args()
    if a.cmd == "spec":
        spec(Path(a.out), Path(a.real46))
    elif a.cmd == "make":
        make(Path(a.spec), Path(a.work), a.models.split(","), a.stage)
    else:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        measure(Path(a.work), Path(a.tools), out, a.models.split(","), a.threads,
                [int(x) for x in a.sizes.split(",")], a.repeat, a.tokens, a.gpu, time.time() + a.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
