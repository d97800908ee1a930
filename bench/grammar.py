"""Grammar-constrained decode vs unconstrained: ours, and llama.cpp's own llama-completion as the anchor.

Same 4.5-shaped benchmark model as bench/runtime.py (real widths, vocabulary 151748, a few text
layers), text only, same prompt and sampler settings (temperature 0.8, top-k 40, top-p 0.95, no
repetition penalty). Constrained answers follow a receipt JSON schema (structure:
keys, numbers, enums; the grammar often rejects the chain's first choice) or json_object (mostly free
text inside strings); end tokens are ignored only without a grammar (a grammar ends the answer when it
completes, so those answers may be shorter). Decode speed is each side's own count: ours from the runtime's timings (first to
last token), llama-completion's from its llama_perf "eval time" line.

Prints decode tok/s per mode, the ratio constrained / unconstrained for both runtimes (goal for ours:
>= 0.90, i.e. at most 10% slower), and how often our grammar had to resample (and of those, how often
over the whole vocabulary instead of the best GRAMMAR_WINDOW candidates).

  python bench/grammar.py --layers 4 --threads 2 --tokens 64 --quant Q4_K_M
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]

import _common  # noqa: E402
import llama_tools  # noqa: E402

PROMPT = "Read this receipt and extract store, items and total as JSON: Corner Cafe, 2 tea 3.50, 1 cake 4.20."
RECEIPT = {
    "type": "object", "additionalProperties": False, "required": ["store", "items", "total"],
    "properties": {
        "store": {"type": "string", "maxLength": 24},
        "items": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "qty", "price"],
            "properties": {"name": {"enum": ["tea", "cake", "bread", "coffee", "juice"]},
                           "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                           "price": {"type": "number", "minimum": 0}}}},
        "total": {"type": "number", "minimum": 0}}}
MODES = {"unconstrained": None, "json_schema": RECEIPT, "json_object": {"type": "object"}}
SAMPLING = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.0, repeat_penalty=1.0)

OURS = r"""
import json, sys
from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime import sampling
text, n, threads, seeds, modes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5])
stats = {"resamples": 0, "full": 0}
orig = sampling.Sampler._grammar_resample
def counting(self, adjusted):
    before = self.state.grammar_full_passes
    tok = orig(self, adjusted)
    stats["resamples"] += 1
    stats["full"] += self.state.grammar_full_passes - before
    return tok
sampling.Sampler._grammar_resample = counting
m = MiniCPMV(text, None, n_ctx=2048, n_threads=threads, n_batch=512)
msgs = [{"role": "user", "content": %r}]
kw = %r
out = {mode: {"rows": [], "resamples": 0, "full": 0} for mode in modes}
m.chat(msgs, max_tokens=4, **kw)  # warm-up: prompt in the KV cache, pages touched
for seed in seeds:  # modes interleaved, so that a change of machine load hits them alike
    for mode, schema in modes.items():
        before = dict(stats)
        extra = {"json_schema": schema} if schema is not None else {}
        # end tokens ignored without a grammar (n tokens); a grammar ends the answer itself when it completes
        r = m.chat(msgs, max_tokens=n, seed=seed, ignore_eos=schema is None, **kw, **extra)
        out[mode]["rows"].append({"tok_s": r.timings.decode_tok_s, "tokens": r.timings.generated_tokens,
                                  "finish": r.finish_reason})
        out[mode]["resamples"] += stats["resamples"] - before["resamples"]
        out[mode]["full"] += stats["full"] - before["full"]
print("RESULT " + json.dumps(out))
""" % (PROMPT, SAMPLING)


def run_ours(text: Path, n: int, threads: int, seeds: list[int]) -> dict:
    r = _common.run_measured([sys.executable, "-c", OURS, str(text), str(n), str(threads), json.dumps(seeds),
                              json.dumps(MODES)], tail_chars=20000)
    line = next((x for x in r.stdout_tail.splitlines() if x.startswith("RESULT ")), None)
    if not r.ok or line is None:
        raise RuntimeError(f"our runtime failed:\n{r.stdout_tail[-3000:]}")
    return json.loads(line[7:])


def rendered_prompt(text: Path) -> str:
    """The prompt our runtime sends (the model's chat format), so llama-completion gets the same tokens."""
    from minicpmv_edge.edge_runtime import MiniCPMV
    from minicpmv_edge.edge_runtime.messages import normalize

    m = MiniCPMV(text, None, n_ctx=512, n_threads=1)
    try:
        return m.build_prompt(normalize([{"role": "user", "content": PROMPT}], m.limits), False)[0]
    finally:
        m.close()


def run_llama(binary: Path, text: Path, prompt: str, n: int, threads: int, seed: int, schema) -> dict:
    from runtime import no_repack

    cmd = [str(binary), "-m", str(text), "-p", prompt, "-n", str(n), "-no-cnv", "-t", str(threads),
           "-c", "2048", "--seed", str(seed), "--temp", str(SAMPLING["temperature"]), "--top-k", str(SAMPLING["top_k"]),
           "--top-p", str(SAMPLING["top_p"]), "--min-p", "0", "--repeat-penalty", "1.0", "--no-warmup",
           "--perf"] + no_repack(text) + (["--json-schema", json.dumps(schema)] if schema is not None else ["--ignore-eos"])
    # random weights print arbitrary bytes: decode leniently (only llama_perf's lines are read)
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=1800)
    m = re.search(r"eval time =\s*([\d.]+) ms /\s*(\d+) runs", p.stderr.split("prompt eval time")[-1])
    if p.returncode != 0 or not m:
        raise RuntimeError(f"llama-completion failed ({p.returncode}):\n{p.stderr[-3000:]}")
    ms, runs = float(m[1]), int(m[2])
    return {"tok_s": runs / (ms / 1e3) if ms else 0.0, "tokens": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "minicpmv-bench"))
    ap.add_argument("--layers", type=int, default=4, help="text layers of the 4.5-shaped model (real: 36)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--quant", default="Q4_K_M", help="text model quantization")
    ap.add_argument("--seeds", type=int, default=5, help="answers per mode (median reported)")
    ap.add_argument("--no-anchor", action="store_true", help="skip llama-completion")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    import runtime

    text, _ = runtime.prepare_model(work, a.layers, a.quant)
    seeds = list(range(a.seeds))
    ours = run_ours(text, a.tokens, a.threads, seeds)
    (work / "grammar-ours.json").write_text(json.dumps(ours))  # kept even if the anchor fails
    theirs = {}
    if not a.no_anchor:
        binary = llama_tools.build(["llama-completion"])["llama-completion"]
        prompt = rendered_prompt(text)
        theirs = {mode: {"rows": []} for mode in MODES}
        for s in seeds:  # interleaved as ours
            for mode, schema in MODES.items():
                theirs[mode]["rows"].append(run_llama(binary, text, prompt, a.tokens, a.threads, s, schema))
    med = lambda d, mode: statistics.median(r["tok_s"] for r in d[mode]["rows"])  # noqa: E731
    m = _common.machine_description(work)
    print(f"model: MiniCPM-V 4.5 shapes (Qwen3-8B width, vocab 151748, {a.layers} of 36 text layers), text {a.quant}; "
          f"{a.threads} threads; {a.tokens} tokens max, end tokens ignored; {len(seeds)} seeds per mode, median")
    print(f"sampling: {SAMPLING}")
    print(f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('ram', '?')}, load {_common.loadavg():.1f}")
    rows = []
    for mode in MODES:
        toks = statistics.median(r["tokens"] for r in ours[mode]["rows"])
        extra = f"{ours[mode]['resamples']} / {ours[mode]['full']}" if mode != "unconstrained" else "-"
        rows.append([mode, f"{med(ours, mode):.2f}", f"{med(ours, mode) / med(ours, 'unconstrained'):.3f}",
                     f"{toks:.0f}", extra,
                     f"{med(theirs, mode):.2f}" if theirs else "-",
                     f"{med(theirs, mode) / med(theirs, 'unconstrained'):.3f}" if theirs else "-"])
    print(_common.table(rows, ["mode", "ours tok/s", "ours ratio", "ours tokens", "resamples / full-vocab",
                               "llama-completion tok/s", "llama-completion ratio"]))
    worst = min(med(ours, mode) / med(ours, "unconstrained") for mode in MODES if mode != "unconstrained")
    print(f"constrained / unconstrained decode, ours, worst mode: {worst:.3f} (goal >= 0.90)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
