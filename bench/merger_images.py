"""Images on MiniCPM-V 4.7 / MiniCPM-OCR 1.0: our processor-exact path vs llama.cpp's llama-mtmd-cli.

The model has the real MiniCPM-V 4.7-1B text shape (Qwen3.5: hidden 1024, 24 layers 3:1 linear:full,
vocab 248094; --layers to reduce) and the real SigLIP-400M tower (1152 wide, 27 layers, 70x70 position
table, merger after layer 6), random weights, built with transformers' own class and converted by us
(F16). For each image it prints time to first token (encode + prefill up to the first sampled
token, model load excluded) of:

- ours: the runtime's processor-exact path (crops cut as transformers' processor does, each encoded by
  llama.cpp's vision graph through the clip shim, visual rows fed as embeddings; for 4.7 the canvas
  positions and one row per llama_decode: docs/families-4.7-ocr.md), from the runtime's timings;
- the anchor: llama.cpp's own llama-mtmd-cli (same llama.cpp source, same GGUF pair, same image and
  threads), which slices with mtmd's rules and decodes in batches of 512; for 4.7 that is not a correct
  run (mtmd knows no canvas positions and letterboxes the slices), only the cost of the plain path;

with the ratio ours / anchor and both prompt sizes (ours counted, mtmd's from its slice count).

    python bench/merger_images.py --family minicpmv-4.7 --layers 24 --threads 2
    python bench/merger_images.py --family minicpm-ocr-1.0 --layers 24 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]

import _common  # noqa: E402

OURS = r"""
import json, sys
from PIL import Image
from minicpmv_edge.edge_runtime import MiniCPMV
text, mmproj, image, prompt, n, threads = sys.argv[1:7]
m = MiniCPMV(text, mmproj, n_ctx=4096, n_threads=int(threads), n_batch=512)
r = m.chat([{"role": "user", "content": [Image.open(image), prompt]}], temperature=0, max_tokens=int(n))
print("RESULT " + json.dumps({"timings": r.timings.as_dict(), "usage": r.usage}))
"""

IMAGES = {"448x448": (448, 448), "1000x600": (1000, 600)}


def build(work: Path, family: str, layers: int) -> Path:
    """A 4.7-1B-shaped checkpoint of `family` (random bf16 weights), saved by transformers."""
    import torch
    import transformers as tf

    from minicpmv_edge.fixtures import merger_recipes

    ckpt = work / f"{family}-L{layers}-ckpt"
    if (ckpt / ".complete").exists():
        return ckpt
    ckpt.mkdir(parents=True, exist_ok=True)
    from minicpmv_edge.fixtures.build import added_token_ids
    from minicpmv_edge.fixtures.recipes import RECIPES

    RECIPES[family].tokenizer(ckpt)  # the fixture recipes' real Qwen3.5 tokenizer of 4.6 (vocab 248094)
    ids, vocab = added_token_ids(ckpt), 248094
    kw = merger_recipes.config_kwargs(family, vocab, ids, 198)
    types = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)]
    kw["text_config"].update(vocab_size=248094, hidden_size=1024, intermediate_size=3584, num_hidden_layers=layers,
                             layer_types=types, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                             linear_num_key_heads=16, linear_num_value_heads=16, linear_key_head_dim=128,
                             linear_value_head_dim=128)
    kw["text_config"]["rope_parameters"].update(rope_theta=1e7, mrope_section=[11, 11, 10])
    kw["vision_config"].update(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27,
                               image_size=980, patch_size=14)
    kw["insert_layer_id"] = 6
    if family.startswith("minicpm-ocr"):
        model = tf.MiniCPMOcrForConditionalGeneration(tf.MiniCPMOcrConfig(**kw))
    else:
        model = tf.MiniCPMV4_7ForConditionalGeneration(tf.MiniCPMV4_7Config(**kw))
    model.eval().to(torch.bfloat16).save_pretrained(str(ckpt))
    fixture = work / f"fixture-{family}"
    if not fixture.exists():
        from minicpmv_edge.fixtures import make_checkpoint

        make_checkpoint(family, fixture)
    for f in ("preprocessor_config.json", "generation_config.json"):
        (ckpt / f).write_text((fixture / f).read_text())
    (ckpt / ".complete").write_text("ok\n")
    return ckpt


def prepare(work: Path, family: str, layers: int) -> tuple[Path, Path]:
    from minicpmv_edge.convert import convert
    from minicpmv_edge.manifest import Manifest

    out = work / f"gguf-{family}-L{layers}"
    if not (out / "manifest.json").exists():
        res = convert(build(work, family, layers), out)
        _real_tokens_only(res.text_path)
    m = Manifest.load(out)
    return m.path_of(out, "text"), m.path_of(out, "mmproj")


def _real_tokens_only(path: Path) -> None:
    """The checkpoint has the real 248094-row vocabulary but the fixture's small tokenizer, so a random
    model would sample ids without text, which llama-mtmd-cli prints as nothing (it is timed from its
    stdout). Zeroing their output rows (OCR: tied, so the embedding rows, which no prompt uses) makes
    it sample real tokens; no shape or cost changes (bench/runtime.py does the same for 4.5)."""
    from gguf import GGUFReader, TokenType

    r = GGUFReader(path, "r+")
    types = r.fields["tokenizer.ggml.token_type"]
    n_real = sum(int(types.parts[i][0]) != TokenType.UNUSED for i in types.data)
    names = {t.name: t for t in r.tensors}
    (names.get("output.weight") or names["token_embd.weight"]).data[n_real:] = 0
    r.data.flush()


def image_file(work: Path, name: str) -> Path:
    from tests.test_families_e2e import _photo  # smooth structure plus noise, as the fidelity tests use
    from PIL import Image

    p = work / f"merger-{name}.png"
    if not p.exists():
        Image.fromarray(_photo(*IMAGES[name], seed=1)).save(p)
    return p


def run_ours(text, mmproj, image, n, threads) -> dict:
    from runtime import PROMPT

    r = _common.run_measured([sys.executable, "-c", OURS, str(text), str(mmproj), str(image), PROMPT, str(n),
                              str(threads)], tail_chars=20000)
    line = next((x for x in r.stdout_tail.splitlines() if x.startswith("RESULT ")), None)
    if not r.ok or line is None:
        raise RuntimeError(f"our runtime failed:\n{r.stdout_tail[-3000:]}")
    d = json.loads(line[7:])
    return {"ttft_ms": d["timings"]["ttft_ms"], "encode_ms": sum(d["timings"]["image_encode_ms"]),
            "prompt_tokens": d["usage"]["prompt_tokens"], "peak_rss_mb": r.maxrss_bytes / 2**20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["minicpmv-4.7", "minicpm-ocr-1.0"], default="minicpmv-4.7")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "minicpmv-bench"))
    ap.add_argument("--layers", type=int, default=24, help="text layers (real: 24)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=4, help="answer tokens per run")
    ap.add_argument("--images", default=",".join(IMAGES))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--prepare-only", action="store_true", help="build and convert the model, measure nothing")
    a = ap.parse_args(argv)
    import llama_tools
    from runtime import run_mtmd_cli

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    mach = _common.machine_description(work)
    print("machine: " + "; ".join(f"{k} {v}" for k, v in mach.items()))
    binary = llama_tools.build(["llama-mtmd-cli"])["llama-mtmd-cli"]
    text, mmproj = prepare(work, a.family, a.layers)
    if a.prepare_only:
        print(f"prepared {text} and {mmproj}")
        return 0
    rows = []
    for name in a.images.split(","):
        img = image_file(work, name)
        load = _common.loadavg()
        ours = run_ours(text, mmproj, img, a.tokens, a.threads)
        theirs = run_mtmd_cli(binary, text, mmproj, img, a.tokens, a.threads)
        rows.append({"image": name, "ours": ours, "anchor": theirs, "load_before": load})
        print(f"{a.family} {name}: ours TTFT {ours['ttft_ms'] / 1e3:.1f} s ({ours['prompt_tokens']} prompt tokens, "
              f"encode {ours['encode_ms'] / 1e3:.1f} s), llama-mtmd-cli {theirs['ttft_ms'] / 1e3:.1f} s "
              f"(encode {theirs['encode_ms'] / 1e3:.1f} s); ratio {ours['ttft_ms'] / theirs['ttft_ms']:.2f}; "
              f"load average {load:.1f}", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
