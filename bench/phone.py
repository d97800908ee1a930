"""The phone model through the C bridge: peak memory, prefill ahead, per-image slice budgets.

    python bench/phone.py [--work /tmp/minicpmv-bench] [--threads 2] [--record]

Model: synthetic MiniCPM-V 4.6 with the real shapes (Qwen3.5-0.8B text: hidden 1024, 24 layers,
vocab 248094; SigLIP2-400M, 27 layers, merger 16x), random bf16 weights written by bench/convert.py,
converted by our converter, text quantized to Q4_K_M, projector F16 and Q8_0 (`minicpmv-edge
quantize`). Each measurement is a fresh process driving libminicpmv_edge_bridge through ctypes:

* memory: load, one 448x448 image, 16 tokens at n_ctx 4096; peak RSS = the child's ru_maxrss
  (mmap'ed weights that were touched count, as they do on a phone), F16 and Q8_0 projector;
* prefill ahead (issue 14 item 3, the C side): a 1344x1344 photo (9 slices + overview).
  Cold: the photo and the question together, timed from the photo to the first token.
  Ahead: mcv_session_prefill_image when the photo is picked, then the question: timed from the
  question to the first token. Goal: ahead <= 0.05 of cold. The counters say why (tokens prefilled
  by the reply, encoder runs);
* budgets: the same photo with max_slices 9 / 4 / 1: mcv_session_image_cost (before encoding) and
  the measured encode.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]
sys.path.insert(0, str(ROOT / "mobile_bridge" / "python"))

import _common  # noqa: E402
import mcv_bridge  # noqa: E402

QUESTION = "What is in the image? Answer in one sentence."
# openbmb/MiniCPM-V-4.6 config.json text_config (Qwen3.5-0.8B; ../shared/reference/real-checkpoints):
# bench/convert.py's own 4.6 layout uses 8B widths for the converter benchmark, not these.
REAL_46_TEXT = {"hidden_size": 1024, "intermediate_size": 3584, "num_attention_heads": 8, "num_key_value_heads": 2,
                "head_dim": 256, "linear_num_key_heads": 16, "linear_num_value_heads": 16, "linear_key_head_dim": 128,
                "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "vocab_size": 248094,
                "tie_word_embeddings": True}


def prepare(work: Path, layers: int) -> dict:
    """The 4.6-shaped pair (reused when present): text Q4_K_M, mmproj F16 and Q8_0, two images."""
    import importlib.util

    import numpy as np
    from PIL import Image

    spec = importlib.util.spec_from_file_location("bench_convert", BENCH / "convert.py")
    conv_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv_bench)
    from minicpmv_edge.convert import convert
    from minicpmv_edge.manifest import Manifest
    from minicpmv_edge.quantize.llama import quantize_text
    from minicpmv_edge.quantize.mmproj import quantize_mmproj

    wide = conv_bench.config_46

    def real_46(fixture, n_layers):
        cfg = wide(fixture, n_layers)
        cfg["text_config"].update(REAL_46_TEXT)
        return cfg

    conv_bench.config_46 = real_46
    work = work / "phone"  # not bench/convert.py's wide v46 checkpoint
    work.mkdir(parents=True, exist_ok=True)
    ckpt, _ = conv_bench.make_checkpoint(work, "4.6", layers)
    out = work / f"gguf-v46-L{layers}"
    if not (out / "manifest.json").exists():
        convert(ckpt, out)
    man = Manifest.load(out)
    f16, mmproj = man.path_of(out, "text"), man.path_of(out, "mmproj")
    q, mm_q8 = out / "text-Q4_K_M.gguf", out / "mmproj-Q8_0.gguf"
    if not q.exists():
        quantize_text(f16, q, "Q4_K_M")
    if not mm_q8.exists():
        quantize_mmproj(mmproj, mm_q8, "Q8_0")
    imgs = {}
    for side in (448, 1344):
        p = work / f"bench-{side}.png"
        if not p.exists():
            Image.fromarray(np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(p)
        imgs[side] = str(p)
    return {"text": str(q), "mmproj": str(mmproj), "mmproj_q8": str(mm_q8), "img448": imgs[448],
            "img1344": imgs[1344]}


# ----------------------------------------------------------------------------- children

def _bridge():
    b = mcv_bridge.Bridge(mcv_bridge.load_library(mcv_bridge.build("plain") / "libminicpmv_edge_bridge.so"))
    b.lib.mcv_set_log_callback(None, None)
    return b


def _first_token(b, s) -> float:
    """When the reply's first token was sampled: generate with max_tokens 1 (prefill + one sample;
    random weights often sample padding ids that print nothing, so no piece is awaited)."""
    rc, _ = b.generate(s, max_tokens=1)
    assert rc == 0 and b.stats(s).n_decode_tokens == 1, rc
    return time.perf_counter()


def child_memory(a) -> dict:
    b = _bridge()
    m = b.load(a.text, a.mmproj, n_ctx=4096, n_threads=a.threads)
    s = b.session(m)
    b.check(b.lib.mcv_session_prefill_image_file(s, a.image.encode(), None), s)
    b.check(b.lib.mcv_session_add_text(s, 1, QUESTION.encode()), s)
    assert b.generate(s, max_tokens=16)[0] == 0
    st = b.stats(s)
    return {"rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "encode_ms": st.image_encode_ms, "decode_tok_s": st.decode_tok_per_s}


def child_prefill(a) -> dict:
    """Cold and ahead in one process, the model loaded once (load time is not what is compared)."""
    b = _bridge()
    lib = b.lib
    m = b.load(a.text, a.mmproj, n_ctx=4096, n_threads=a.threads)
    res = {}
    data = Path(a.image).read_bytes()
    # cold: photo + question, from the photo to the first token
    s = b.session(m)
    t0 = time.perf_counter()
    b.check(lib.mcv_session_prefill_image(s, data, len(data), None), s)
    b.check(lib.mcv_session_add_text(s, 1, QUESTION.encode()), s)
    res["cold_ttft_ms"] = (_first_token(b, s) - t0) * 1e3
    lib.mcv_session_free(s)
    # ahead: the photo prefilled when picked, then the question
    s = b.session(m)
    t0 = time.perf_counter()
    b.check(lib.mcv_session_prefill_image(s, data, len(data), None), s)
    res["prefill_image_ms"] = (time.perf_counter() - t0) * 1e3
    pre = b.stats(s)
    b.check(lib.mcv_session_add_text(s, 1, QUESTION.encode()), s)
    t0 = time.perf_counter()
    res["ahead_ttft_ms"] = (_first_token(b, s) - t0) * 1e3
    st = b.stats(s)
    res.update(image_positions=pre.last_image_n_tokens, image_chunks=pre.last_image_n_chunks,
               encode_ms=pre.last_image_encode_ms, question_tokens=st.n_prefill_tokens,
               encoder_runs_by_reply=st.n_encoded_chunks - pre.n_encoded_chunks)
    lib.mcv_session_free(s)
    # budgets: cost before encoding, then the measured encode
    from PIL import Image

    w, h = Image.open(a.image).size
    res["budgets"] = []
    for cap in (9, 4, 1):
        s = b.session(m)
        c = b.image_cost(s, w, h, max_slices=cap)
        ip = b.image_params(max_slices=cap)
        t0 = time.perf_counter()
        b.check(lib.mcv_session_prefill_image(s, data, len(data), ip), s)
        dt = (time.perf_counter() - t0) * 1e3
        st = b.stats(s)
        res["budgets"].append({"max_slices": cap, "cost_chunks": c.n_chunks, "cost_positions": c.n_tokens,
                               "chunks": st.last_image_n_chunks, "positions": st.last_image_n_tokens,
                               "encode_ms": st.last_image_encode_ms, "prefill_ms": dt})
        lib.mcv_session_free(s)
    lib.mcv_model_free(m)
    return res


def run_child(kind: str, args: list[str]) -> tuple[dict, _common.RunResult]:
    r = _common.run_measured([sys.executable, __file__, "--child", kind, *args], tail_chars=4000)
    if not r.ok:
        raise RuntimeError(f"{kind} child failed:\n{r.stdout_tail}")
    line = [x for x in r.stdout_tail.splitlines() if x.startswith("{")][-1]
    return json.loads(line), r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/minicpmv-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=24, help="text layers (the real 4.6 has 24)")
    ap.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--text"), ap.add_argument("--mmproj"), ap.add_argument("--image")
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child_memory(a) if a.child == "memory" else child_prefill(a)))
        return 0
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    f = prepare(work, a.layers)
    mcv_bridge.build("plain")
    common = ["--threads", str(a.threads), "--text", f["text"]]
    mem = {}
    for name, mm in (("F16", f["mmproj"]), ("Q8_0", f["mmproj_q8"])):
        res, r = run_child("memory", common + ["--mmproj", mm, "--image", f["img448"]])
        mem[name] = dict(res, rss_gb=r.maxrss_bytes / 1e9, anon_gb=r.peak_anon_bytes / 1e9,
                         file_gb=r.peak_file_bytes / 1e9, load=r.load_before)
    pre, r = run_child("prefill", common + ["--mmproj", f["mmproj"], "--image", f["img1344"]])
    sizes = {k: Path(f[k]).stat().st_size / 1e9 for k in ("text", "mmproj", "mmproj_q8")}
    ratio = pre["ahead_ttft_ms"] / pre["cold_ttft_ms"]
    lines = [f"files: text Q4_K_M {sizes['text']:.2f} GB, mmproj F16 {sizes['mmproj']:.2f} GB, "
             f"Q8_0 {sizes['mmproj_q8']:.2f} GB; {a.threads} threads; load average {r.load_before:.1f}"]
    for name, m in mem.items():
        lines.append(f"memory, mmproj {name}: peak RSS {m['rss_gb']:.2f} GB (anon {m['anon_gb']:.2f}, file "
                     f"{m['file_gb']:.2f}); 448x448 encode {m['encode_ms']:.0f} ms; decode {m['decode_tok_s']:.1f} tok/s")
    lines.append(f"prefill ahead, 1344x1344 photo ({pre['image_chunks']} chunks, {pre['image_positions']} positions, "
                 f"encode {pre['encode_ms']:.0f} ms): cold TTFT {pre['cold_ttft_ms']:.0f} ms; after prefill_image "
                 f"({pre['prefill_image_ms']:.0f} ms, while the user types) question -> first token "
                 f"{pre['ahead_ttft_ms']:.0f} ms = {ratio:.3f} of cold (goal <= 0.05); the reply prefilled "
                 f"{pre['question_tokens']} tokens and ran the encoder {pre['encoder_runs_by_reply']} times")
    for bud in pre["budgets"]:
        lines.append(f"budget max_slices {bud['max_slices']}: cost {bud['cost_chunks']} chunks / "
                     f"{bud['cost_positions']} positions (measured {bud['chunks']} / {bud['positions']}), "
                     f"encode {bud['encode_ms']:.0f} ms, prefill {bud['prefill_ms']:.0f} ms")
    print("\n".join(lines))
    print(json.dumps({"memory": mem, "prefill": pre, "sizes_gb": sizes}))
    if a.record:
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as fh:
            fh.write(f"\n## Phone model through the C bridge: `bench/phone.py` ({time.strftime('%Y-%m-%d')})\n\n"
                     f"MiniCPM-V 4.6 shapes ({a.layers} text layers), random weights, llama.cpp 0c1e570; machine: "
                     f"{_common.machine_description()['cpu']}, {_common.machine_description()['ram']}.\n"
                     f"Command: `python bench/phone.py --threads {a.threads} --record`\n\n"
                     + "".join(f"- {x}\n" for x in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
