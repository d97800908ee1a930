"""Benchmark: our converter vs llama.cpp's convert_hf_to_gguf.py at real MiniCPM-V sizes.

    python bench/convert.py [--layers 4] [--fit] [--repeat 1] [--work /tmp/minicpmv-bench] [--out-dir DIR]

What it does (a script, not a test; nothing here is imported by the package):

1. Writes synthetic checkpoints (cached under --work, reused when the spec matches):
   * `v45-L{N}`: MiniCPM-V 4.5 layout and real shapes (Qwen3-8B text: hidden 4096,
     ffn 12288, 32/8 heads of 128, vocab 151748; SigLIP-400M: 1152/4304/16 heads/
     27 layers, 4900 positions; resampler with 64 queries of 4096), but only N text
     layers (the real model has 36). With --fit also `v45-L{2N}`, for a per-layer fit.
   * `v46-L{M}`: MiniCPM-V 4.6 layout (`MiniCPMV4_6ForConditionalGeneration`:
     Qwen3.5 hybrid text, SigLIP + ViT merger + DownsampleMLP) with Qwen3.5 default
     widths (hidden 4096, ffn 12288, 16/4 heads of 256, linear attention 16 K / 32 V
     heads of 128), vocab 151748 and M text layers chosen so that its total bytes are
     within 10% of `v45-L{N}`.
   Tensor names and shapes come from the real module classes built on torch's meta
   device (the same classes the tiny fixtures use), so nothing is held in RAM; the
   bytes are bf16 normal(0, 0.02) values written straight in the safetensors format
   (8-byte header length, JSON header, data) from a 64 MB pool of random numbers,
   in shards of at most ~4 GB with a model.safetensors.index.json. Tokenizer and
   small JSON files come from the tiny fixture of the same family (the vocab is padded
   to the embedding rows by both converters).
2. Converts them in child processes, measuring wall time, CPU time, source MB/s and
   peak RSS (ru_maxrss of each child; plus peak anonymous vs file-backed RSS from
   polling /proc): ours (`python -m minicpmv_edge convert SRC -o OUT --outtype f16`)
   on every checkpoint; llama.cpp's convert_hf_to_gguf.py (`--outtype f16 --no-mtp`,
   then `--mmproj`; the two runs are summed) on the 4.6 one, which is the only
   MiniCPM-V layout it converts without trust_remote_code. llama.cpp runs from the
   llama-cpp-python sdist of the installed version, with its own gguf-py on
   PYTHONPATH, through a 5-line wrapper that only makes its tokenizer check answer
   "qwen35" (its BPE pre-tokenizer is identified by hashing a probe string's tokens,
   and the tiny fixture tokenizer is not the real one; this changes no tensor work).
3. Page cache: nothing is dropped. Each input is read once before its first run and
   the converters then run back to back on a warm cache; dirty pages are flushed
   (`sync`, untimed) before every run and outputs are deleted after it.

With --candidate DIR, our converter also runs from DIR (cwd DIR, so DIR/convert
shadows the repo's package; minicpmv_edge still comes from the install): a way to
time a proposed converter change against the current one in the same session.

Prints a table and the ratio lines; --json writes all numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
# the project's packages first, bench helpers last: bench/convert.py and bench/quantize.py
# must not shadow the `convert` and `quantize` packages
sys.path[:] = [str(REPO)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]

from minicpmv_edge.fixtures.real_layout import POOL_ELEMS, bf16_pool, write_bf16_safetensors  # noqa: E402
from _common import (MB, RunResult, fmt_bytes, git_state, machine_description, python_exe, read_files,  # noqa: E402
                     run_measured, table)

REAL_45_LAYERS = 36
VOCAB = 151748
SHARD_MAX = 4 * 10**9

LLAMA_WRAPPER = '''\
# Runs llama.cpp's convert_hf_to_gguf.py unchanged, except that the BPE pre-tokenizer
# check (a hash of the *real* tokenizer's output) answers "qwen35" for the bench's tiny
# fixture tokenizer. Written by bench/convert.py.
import runpy, sys
root = sys.argv[1]
sys.path.insert(0, root)
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen35"
sys.argv = [root + "/convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


# ----------------------------------------------------------------------------- specs

def _fixture(work: Path, family: str) -> Path:
    d = work / f"fixture-{family}"
    if not (d / "config.json").exists():
        from minicpmv_edge.fixtures import make_checkpoint

        make_checkpoint(family, d)
    return d


def config_45(fixture: Path, layers: int) -> dict:
    cfg = json.loads((fixture / "config.json").read_text())
    cfg.update({
        "hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "vocab_size": VOCAB, "num_hidden_layers": layers, "max_window_layers": layers,
        "layer_types": ["full_attention"] * layers, "query_num": 64, "image_size": 448,
    })
    cfg["vision_config"].update({"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16,
                                 "num_hidden_layers": 27, "image_size": 980, "patch_size": 14})
    return cfg


def config_40(fixture: Path, layers: int) -> dict:
    """MiniCPM-V 4.0 widths (MiniCPM4-3B as Llama: hidden 2560, FFN 10240, 32 heads, 2 KV heads,
    vocab 73448; LongRoPE with equal short/long factors) and the full SigLIP-400M tower."""
    cfg = json.loads((fixture / "config.json").read_text())
    head_dim = 2560 // 32
    factors = [round(1.0 + 30.0 * i / (head_dim // 2 - 1), 6) for i in range(head_dim // 2)]
    cfg.update({
        "hidden_size": 2560, "intermediate_size": 10240, "num_attention_heads": 32, "num_key_value_heads": 2,
        "head_dim": head_dim, "vocab_size": 73448, "num_hidden_layers": layers, "query_num": 64, "image_size": 448,
    })
    cfg["rope_scaling"].update({"long_factor": factors, "short_factor": factors})
    cfg["vision_config"].update({"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16,
                                 "num_hidden_layers": 27, "image_size": 980, "patch_size": 14})
    return cfg


def config_46(fixture: Path, layers: int) -> dict:
    cfg = json.loads((fixture / "config.json").read_text())
    interval = 4
    cfg["text_config"].update({
        "hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 16, "num_key_value_heads": 4,
        "head_dim": 256, "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
        "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "vocab_size": VOCAB, "num_hidden_layers": layers,
        "layer_types": ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)],
    })
    cfg["text_config"]["rope_parameters"]["mrope_section"] = [11, 11, 10]
    cfg["vision_config"].update({"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16,
                                 "num_hidden_layers": 27, "image_size": 980, "patch_size": 14, "insert_layer_id": 6})
    cfg["insert_layer_id"] = 6
    return cfg


def tensors_45(cfg: dict, family: str = "minicpmv-4.5") -> list[tuple[str, tuple[int, ...]]]:
    import torch

    from minicpmv_edge.fixtures.build import build_text_model
    from minicpmv_edge.fixtures.towers import Resampler, prefixed_state_dict, siglip_vision

    with torch.device("meta"):
        llm = build_text_model(family, cfg)
        vpm = siglip_vision(cfg["vision_config"])
        res = Resampler(cfg["query_num"], cfg["hidden_size"], cfg["vision_config"]["hidden_size"])
    # the same selection as minicpmv_edge.fixtures.build._minicpmv_weights
    sd = prefixed_state_dict(llm, "llm.")
    sd.update(prefixed_state_dict(vpm, "vpm.", drop=("head.", "embeddings.position_ids")))
    sd.update(prefixed_state_dict(res, "resampler."))
    return sorted((k, tuple(v.shape)) for k, v in sd.items())


def tensors_46(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    import torch
    from transformers import MiniCPMV4_6Config, MiniCPMV4_6ForConditionalGeneration

    config = MiniCPMV4_6Config.from_dict(cfg)
    with torch.device("meta"):
        model = MiniCPMV4_6ForConditionalGeneration(config)
    return sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())


def nbytes(tensors) -> int:
    return sum(2 * math.prod(s) for _, s in tensors)


# ----------------------------------------------------------------------------- writing

def write_sharded(d: Path, tensors) -> int:
    """Random BF16 shards (the fixtures' writer, minicpmv_edge/fixtures/real_layout.py) of at most SHARD_MAX
    bytes and their model.safetensors.index.json, as Hugging Face shards a checkpoint; returns the shard count."""
    pool, rng = bf16_pool(0), np.random.default_rng(1)
    groups = shard_groups(tensors)
    weight_map = {}
    for i, g in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        write_bf16_safetensors(d / fname, g, pool, rng)
        weight_map.update({name: fname for name, _ in g})
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": nbytes(tensors)}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    return len(groups)


def shard_groups(tensors) -> list[list]:
    total = nbytes(tensors)
    n = max(1, math.ceil(total / SHARD_MAX))
    target = total / n
    groups, acc = [[]], 0
    for t in tensors:
        if groups[-1] and acc >= target * len(groups) and len(groups) < n:
            groups.append([])
        groups[-1].append(t)
        acc += 2 * math.prod(t[1])
    return groups


def make_checkpoint(work: Path, family: str, layers: int, log=print) -> tuple[Path, int]:
    """Write (or reuse) a synthetic checkpoint; returns (dir, source bytes)."""
    fx = _fixture(work, f"minicpmv-{family}")
    if family == "4.6":
        cfg, tensors = config_46(fx, layers), None
        tensors = tensors_46(cfg)
    else:
        cfg = (config_45 if family == "4.5" else config_40)(fx, layers)
        tensors = tensors_45(cfg, f"minicpmv-{family}")
    spec = hashlib.sha256(json.dumps([cfg, tensors, POOL_ELEMS, SHARD_MAX]).encode()).hexdigest()[:16]
    d = work / f"v{family.replace('.', '')}-L{layers}"
    marker = d / ".bench-complete"
    total = nbytes(tensors)
    if marker.exists() and marker.read_text().strip() == spec:
        log(f"  reusing {d} ({fmt_bytes(total)}, {len(tensors)} tensors)")
        return d, total
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for f in fx.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, d / f.name)
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    t0 = time.perf_counter()
    n_shards = write_sharded(d, tensors)
    os.sync()
    dt = time.perf_counter() - t0
    marker.write_text(spec + "\n")
    log(f"  wrote {d} ({fmt_bytes(total)}, {len(tensors)} tensors, {n_shards} shards) in {dt:.0f} s")
    return d, total


def layers_46_for(target_bytes: int, fx46: Path) -> tuple[int, int]:
    """The 4.6 text layer count whose checkpoint is within 10% of target_bytes, preferring
    counts that include a full-attention layer (every 4th), then the closest size."""
    sizes = []
    for m in range(1, 200):
        b = nbytes(tensors_46(config_46(fx46, m)))
        sizes.append((m, b))
        if b > target_bytes * 1.1:
            break
    close = [(m, b) for m, b in sizes if abs(b / target_bytes - 1) <= 0.10] or sizes
    return min(close, key=lambda mb: (mb[0] < 4, abs(mb[1] - target_bytes)))


# ----------------------------------------------------------------------------- llama.cpp

def find_llama_cpp(work: Path, override: str | None) -> Path:
    import llama_tools  # the installed llama-cpp-python's own llama.cpp source (downloaded if absent)

    return Path(override) if override else llama_tools.llama_source()

def _out_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*.gguf"))


def measure(label: str, cmds: list[list[str]], out: Path, env=None, log_dir: Path | None = None,
            cwd: Path = REPO) -> dict:
    """Run cmds one after another into `out` (fresh); returns summed wall/CPU, max RSS."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    runs: list[RunResult] = []
    for i, cmd in enumerate(cmds):
        os.sync()
        log_path = (log_dir / f"{label.replace(' ', '_')}-{i}.log") if log_dir else None
        r = run_measured(cmd, env=env, cwd=cwd, log_path=log_path)
        runs.append(r)
        if not r.ok:
            raise SystemExit(f"{label}: command failed (rc {r.returncode}): {' '.join(cmd)}\n{r.stdout_tail}")
    res = {
        "label": label,
        "wall_s": sum(r.wall_s for r in runs),
        "cpu_s": sum(r.cpu_s for r in runs),
        "maxrss": max(r.maxrss_bytes for r in runs),
        "peak_anon": max(r.peak_anon_bytes for r in runs),
        "peak_file": max(r.peak_file_bytes for r in runs),
        "out_bytes": _out_bytes(out),
        "load": max(max(r.load_before, r.load_after) for r in runs),
        "parts": [{"cmd": r.cmd, "wall_s": r.wall_s, "cpu_s": r.cpu_s, "maxrss": r.maxrss_bytes,
                   "peak_anon": r.peak_anon_bytes, "peak_file": r.peak_file_bytes,
                   "load_before": r.load_before, "load_after": r.load_after} for r in runs],
    }
    shutil.rmtree(out)
    os.sync()
    return res


def best_of(results: list[dict]) -> dict:
    """Fastest run's time, worst run's memory."""
    b = dict(min(results, key=lambda r: r["wall_s"]))
    for k in ("maxrss", "peak_anon", "peak_file"):
        b[k] = max(r[k] for r in results)
    b["walls"] = [r["wall_s"] for r in results]
    return b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/minicpmv-bench", help="cache for checkpoints, logs (default %(default)s)")
    ap.add_argument("--out-dir", help="where converters write (default WORK/out; e.g. /dev/shm to take the disk "
                                      "out of the measurement)")
    ap.add_argument("--layers", type=int, default=4, help="4.5 text layers (real model: 36; default %(default)s)")
    ap.add_argument("--fit", action="store_true", help="also convert a 2N-layer 4.5 checkpoint for a per-layer fit")
    ap.add_argument("--repeat", type=int, default=1, help="runs per converter and input (best time is reported)")
    ap.add_argument("--skip-llama", action="store_true", help="only time our converter")
    ap.add_argument("--llama-cpp", help="llama.cpp source dir (default: the installed llama-cpp-python's sdist)")
    ap.add_argument("--candidate", metavar="DIR", help="also run our converter from DIR (DIR/convert shadows the "
                                                       "repo's package), e.g. a tree with a proposed change")
    ap.add_argument("--clean", action="store_true", help="delete the generated checkpoints at the end")
    ap.add_argument("--json", help="write all numbers to this JSON file")
    args = ap.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out_root = Path(args.out_dir) if args.out_dir else work / "out"
    out_root = out_root / f"bench-convert-{os.getpid()}"
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    py = python_exe()

    mach = machine_description(work)
    print("machine:")
    for k, v in mach.items():
        print(f"  {k:9} {v}")
    print(f"  outputs  {out_root.parent}")
    mach["repo"] = git_state(REPO, ["convert"])
    print(f"  repo     {mach['repo']}")
    if args.candidate:
        print(f"  candidate convert/ from {args.candidate}")

    print("checkpoints:")
    N = args.layers
    ck45, b45 = make_checkpoint(work, "4.5", N)
    ck45b = b45b = None
    if args.fit:
        ck45b, b45b = make_checkpoint(work, "4.5", 2 * N)
    fx46 = _fixture(work, "minicpmv-4.6")
    M, _ = layers_46_for(b45, fx46)
    ck46, b46 = make_checkpoint(work, "4.6", M)
    print(f"  4.6 text layers {M}: {b46 / b45 - 1:+.1%} bytes vs 4.5 with {N} layers")
    b45_full = nbytes(tensors_45(config_45(_fixture(work, "minicpmv-4.5"), REAL_45_LAYERS)))

    llama = None
    lenv = None
    if not args.skip_llama:
        llama = find_llama_cpp(work, args.llama_cpp)
        wrapper = work / "llama_convert_wrapper.py"
        wrapper.write_text(LLAMA_WRAPPER)
        lenv = dict(os.environ, PYTHONPATH=str(llama / "gguf-py"))
        print(f"  llama.cpp: {llama}")

    def ours(src: Path, out: Path) -> list[list[str]]:
        return [[py, "-m", "minicpmv_edge", "convert", str(src), "-o", str(out), "--outtype", "f16", "--json"]]

    def theirs(src: Path, out: Path) -> list[list[str]]:
        base = [py, str(work / "llama_convert_wrapper.py"), str(llama), str(src), "--outtype", "f16"]
        return [base + ["--no-mtp", "--outfile", str(out / "text-f16.gguf")],
                base + ["--mmproj", "--outfile", str(out / "mmproj-f16.gguf")]]

    cand = Path(args.candidate).resolve() if args.candidate else None
    jobs = []
    for src, inp, nb, fam in [(ck45, f"v45-L{N}", b45, "4.5"), (ck45b, f"v45-L{2 * N}", b45b, "4.5"),
                              (ck46, f"v46-L{M}", b46, "4.6")]:
        if src is None:
            continue
        jobs.append((f"ours {fam}", inp, src, nb, ours, None, REPO))
        if cand:
            jobs.append((f"candidate {fam}", inp, src, nb, ours, None, cand))
    if llama:
        jobs.append(("llama.cpp 4.6", f"v46-L{M}", ck46, b46, theirs, lenv, REPO))

    print("runs (warm page cache; each input read once first; sync before each run):")
    results: dict[tuple[str, str], list[dict]] = {}
    warmed: set[Path] = set()
    for rep in range(args.repeat):
        for label, inp, src, nb, mk, env, cwd in jobs:
            if src not in warmed:
                n, dt = read_files(sorted(src.glob("*.safetensors")))
                print(f"  warm-read {inp}: {fmt_bytes(n)} in {dt:.1f} s ({n / MB / dt:,.0f} MB/s)")
                warmed.add(src)
            r = measure(f"{label} {inp}", mk(src, out_root), out_root, env=env, log_dir=logs, cwd=cwd)
            r.update(input=inp, src_bytes=nb, repeat=rep)
            results.setdefault((label, inp), []).append(r)
            print(f"  [{rep + 1}/{args.repeat}] {label:14} {inp:8} {r['wall_s']:7.1f} s  "
                  f"{nb / MB / r['wall_s']:6.0f} MB/s  peak RSS {r['maxrss'] / MB:6.0f} MB "
                  f"(anon {r['peak_anon'] / MB:.0f}, file {r['peak_file'] / MB:.0f})  CPU {r['cpu_s']:.1f} s  "
                  f"load {r['load']:.1f}")

    best = {k: best_of(v) for k, v in results.items()}
    rows = []
    for (label, inp), r in best.items():
        rows.append([label, inp, fmt_bytes(r["src_bytes"]), f"{r['wall_s']:.1f}",
                     f"{r['src_bytes'] / MB / r['wall_s']:.0f}", f"{r['cpu_s']:.1f}",
                     f"{r['maxrss'] / MB:,.0f}", f"{r['peak_anon'] / MB:,.0f}", f"{r['peak_file'] / MB:,.0f}",
                     fmt_bytes(r["out_bytes"]), f"{r['load']:.1f}"])
    print()
    print(table(rows, ["converter", "input", "source", "wall s", "MB/s", "CPU s", "peak RSS MB",
                       "anon MB", "file MB", "output", "load"]))
    print("(peak RSS = ru_maxrss of the child, file-backed pages included; anon / file = largest RssAnon /"
          " RssFile seen polling /proc every 20 ms; load = highest 1-min load average at start/end of the run)")
    if args.repeat > 1:
        print(f"(best wall time of {args.repeat} runs, largest RSS of any run)")
    print()

    summary = {}
    o46 = best[("ours 4.6", f"v46-L{M}")]
    if llama:
        l46 = best[("llama.cpp 4.6", f"v46-L{M}")]
        speed = l46["wall_s"] / o46["wall_s"]
        line = (f"ours vs llama.cpp (same 4.6 input, {fmt_bytes(b46)}): speed {speed:.2f}x "
                f"(CPU time {l46['cpu_s'] / o46['cpu_s']:.2f}x), "
                f"RSS ours {o46['maxrss'] / MB:,.0f} MB vs {l46['maxrss'] / MB:,.0f} MB")
        print(line)
        summary["ratio_line"] = line
        summary["speedup"] = speed
        if cand:
            c46 = best[("candidate 4.6", f"v46-L{M}")]
            line = (f"candidate vs llama.cpp (same 4.6 input): speed {l46['wall_s'] / c46['wall_s']:.2f}x "
                    f"(CPU time {l46['cpu_s'] / c46['cpu_s']:.2f}x), RSS candidate {c46['maxrss'] / MB:,.0f} MB "
                    f"vs {l46['maxrss'] / MB:,.0f} MB")
            print(line)
            summary["candidate_ratio_line"] = line
    for who in ["ours"] + (["candidate"] if cand else []):
        o45 = best[(f"{who} 4.5", f"v45-L{N}")]
        per_byte = o45["wall_s"] * b45_full / b45
        ext = f"per-byte ~{per_byte:.0f} s"
        full = per_byte
        if ck45b:
            o45b = best[(f"{who} 4.5", f"v45-L{2 * N}")]
            per_layer = (o45b["wall_s"] - o45["wall_s"]) / N
            full = o45["wall_s"] + (REAL_45_LAYERS - N) * per_layer
            ext = f"~{full:.0f} s ({per_layer:.2f} s/layer from {N}->{2 * N} layers; {ext})"
        line = (f"{who} on 4.5 shapes ({N} layers, {fmt_bytes(b45)}): {o45['wall_s']:.1f} s, "
                f"{b45 / MB / o45['wall_s']:.0f} MB/s, peak RSS {o45['maxrss'] / MB:,.0f} MB; "
                f"extrapolated full {REAL_45_LAYERS} layers ({fmt_bytes(b45_full)}): {ext}")
        print(line)
        summary[f"{who}45_line"] = line
        summary[f"{who}_extrapolated_full_s"] = full

    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": mach, "args": vars(args), "summary": summary,
            "results": {f"{k[0]} | {k[1]}": v for k, v in results.items()},
        }, indent=2, default=str))
    if args.clean:
        for d in {ck45, ck46} | ({ck45b} if ck45b else set()):
            shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(out_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
