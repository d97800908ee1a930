"""Cost of exact canvas M-RoPE decoding (MiniCPM-V 4.7): one image row per llama_decode vs batches.

llama.cpp 0c1e570 masks M-RoPE cells that share t by (h, w) (llama-kv-cache.cpp is_2d_gt), which is
not the index-causal mask 4.7 was trained with, so the runtime feeds a canvas frame one row at a
time with the causal mask off (edge_runtime/engine.py decode_embeddings). This script measures
what that costs against the batched (approximate) decode on the real 4.7-1B text shape
(Qwen3.5: hidden 1024, 24 layers 3:1 linear:full, vocab 248094; random weights, the layer count
can be reduced with --layers), F16 and Q4_K_M, for one 448x448 slice worth of rows (64 at 16x)
and a 9-slice image (640 rows). It prints both times and their ratio.

    python bench/canvas_decode.py --layers 24 --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def build(work: Path, layers: int) -> Path:
    import torch
    import transformers as tf

    from minicpmv_edge.fixtures import merger_recipes
    from minicpmv_edge.fixtures.build import added_token_ids
    from minicpmv_edge.fixtures.recipes import RECIPES

    ckpt = work / "ckpt"
    if (ckpt / "config.json").exists():
        return ckpt
    ckpt.mkdir(parents=True)
    RECIPES["minicpmv-4.7"].tokenizer(ckpt)  # the real Qwen3.5 tokenizer of 4.6 (vocab 248094)
    ids = added_token_ids(ckpt)
    kw = merger_recipes.config_kwargs("minicpmv-4.7", 248094, ids, 198)
    types = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)]
    kw["text_config"].update(vocab_size=248094, hidden_size=1024, intermediate_size=3584, num_hidden_layers=layers,
                             layer_types=types, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                             linear_num_key_heads=16, linear_num_value_heads=16, linear_key_head_dim=128,
                             linear_value_head_dim=128)
    kw["text_config"]["rope_parameters"].update(rope_theta=1e7, mrope_section=[11, 11, 10])
    model = tf.MiniCPMV4_7ForConditionalGeneration(tf.MiniCPMV4_7Config(**kw)).eval().to(torch.bfloat16)
    model.save_pretrained(str(ckpt))
    return ckpt


def timed(ctx, embd, pos, index_causal: bool) -> float:
    ctx.clear()
    t0 = time.perf_counter()
    ctx.decode_embeddings(embd, pos, index_causal=index_causal, logits_last=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "canvas-decode-bench"))
    ap.add_argument("--types", default="F16,Q4_K_M", help="text types to time, comma-separated")
    ap.add_argument("--rows", default="64,640", help="image rows per frame, comma-separated")
    args = ap.parse_args()
    from minicpmv_edge.convert import convert
    from minicpmv_edge.edge_runtime.engine import Context, Model
    from minicpmv_edge.quantize.llama import quantize_text

    work = Path(args.work)
    ckpt = build(work, args.layers)
    f16 = work / "out" / "minicpmv-4.7-text-f16.gguf"
    if not f16.exists():
        f16 = convert(ckpt, work / "out").text_path
    q4 = work / "out" / "text-q4km.gguf"
    if not q4.exists():
        quantize_text(f16, q4, "Q4_K_M", nthread=args.threads)
    rng = np.random.default_rng(0)
    print(f"| text | rows | batched s | one row per decode s | ratio |\n|---|---|---|---|---|")
    types = args.types.split(",")
    for label, path in [(t, p) for t, p in (("F16", f16), ("Q4_K_M", q4)) if t in types]:
        model = Model(str(path))
        ctx = Context(model, n_ctx=2048, n_batch=512, n_threads=args.threads)
        for n in (int(x) for x in args.rows.split(",")):
            side = int(np.ceil(np.sqrt(n)))
            embd = rng.normal(0, 0.02, size=(n, model.n_embd)).astype(np.float32)
            hw = np.stack(np.divmod(np.arange(n), side))
            pos = np.vstack([np.full(n, 5), 5 + hw[0], 5 + hw[1]]).astype(np.int64)
            timed(ctx, embd[:8], pos[:, :8], False)  # warm-up
            b = timed(ctx, embd, pos, False)
            o = timed(ctx, embd, pos, True)
            print(f"| {label} {args.layers}L | {n} | {b:.2f} | {o:.2f} | {o / b:.1f}x |")
        ctx.close()
        model.close()


if __name__ == "__main__":
    main()
