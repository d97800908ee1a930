"""`minicpmv-edge quality REF.gguf CANDIDATE.gguf`: KL divergence / top-1 agreement, embedding cosine."""

from __future__ import annotations

import json

EXAMPLES = """examples:
  minicpmv-edge quality out/text-f16.gguf out/text-q4_k_m.gguf
  minicpmv-edge quality out/text-f16.gguf out/text-q4_k_m.gguf --mmproj-ref mmproj-f16.gguf --mmproj mmproj-q8_0.gguf
  minicpmv-edge quality out/text-f16.gguf out/text-q8_0.gguf --json

KL is KL(reference || candidate) of next-token distributions, per token, over the fixed corpus
shipped in quantize/data/corpus.txt (chunks of --chunk tokens); top-1 is the share of positions
where both pick the same token. Cosine compares image embeddings over a fixed generated image set."""


def add_parser(sub) -> None:
    from ._common import add_command, add_json, add_threads, int_range

    p = add_command(sub, "quality", "compare a quantized model with its reference (KL, top-1, image cosine)",
                    EXAMPLES)
    p.add_argument("ref", metavar="REF.gguf", help="reference text model (e.g. the F16 file)")
    p.add_argument("cand", metavar="CANDIDATE.gguf", help="candidate text model (e.g. its Q4_K_M)")
    p.add_argument("--mmproj-ref", metavar="A", help="reference projector")
    p.add_argument("--mmproj", metavar="B", help="candidate projector (both bound to REF's text model)")
    p.add_argument("--chunk", type=int_range(8, 4096, "a token count"), default=128,
                   help="tokens per evaluation chunk")
    add_threads(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from minicpmv_edge.errors import InputError
    from minicpmv_edge.quantize.quality import as_dict, text_quality, vision_quality

    from minicpmv_edge.extras import require

    require("runtime", "quality")
    if bool(args.mmproj_ref) != bool(args.mmproj):
        raise InputError("--mmproj-ref and --mmproj go together")
    out = {"ref": args.ref, "candidate": args.cand,
           "text": as_dict(text_quality(args.ref, args.cand, chunk=args.chunk, n_threads=args.threads))}
    if args.mmproj:
        out["vision"] = as_dict(vision_quality(args.ref, args.mmproj_ref, args.mmproj, n_threads=args.threads))
    if args.json:
        print(json.dumps(out))
        return 0
    t = out["text"]
    rows = [("tokens", f"{t['n_tokens']} in {t['n_chunks']} chunks"), ("KL mean", f"{t['kl_mean']:.6f}"),
            ("KL p99", f"{t['kl_p99']:.6f}"), ("KL max", f"{t['kl_max']:.6f}"), ("top-1 agree", f"{t['top1']:.2%}")]
    if "vision" in out:
        v = out["vision"]
        rows += [("images", f"{v['n_images']} ({v['n_embeddings']} embeddings)"),
                 ("cosine mean", f"{v['cos_mean']:.6f}"), ("cosine min", f"{v['cos_min']:.6f}")]
    for k, val in rows:
        print(f"{k:<12} {val}")
    return 0
