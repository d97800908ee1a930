"""`minicpmv-edge convert SRC -o OUT`: Hugging Face checkpoint -> GGUF pair + manifest."""

from __future__ import annotations

EXAMPLES = """examples:
  minicpmv-edge convert ~/models/MiniCPM-V-4_5 -o out/minicpmv45
  minicpmv-edge convert ~/models/MiniCPM-V-4.6 -o out/v46 --outtype bf16
  minicpmv-edge convert ./ckpt -o out --family 2.6 --json
  minicpmv-edge convert ~/models/MiniCPM-V-4_5 -o out/q4 --quant Q4_K_M
  minicpmv-edge convert ~/models/MiniCPM-V-4_5-int4 -o out/int4      (GPTQ/AWQ: lossless Q4_0/Q4_1 repack)"""


def add_parser(sub) -> None:
    from ._common import add_command, add_json, add_threads

    p = add_command(sub, "convert", "convert a Hugging Face MiniCPM-V checkpoint to a text GGUF + mmproj GGUF",
                    EXAMPLES)
    p.add_argument("src", metavar="SRC_DIR", help="checkpoint directory (config.json, *.safetensors, tokenizer files)")
    p.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="output folder (created if missing)")
    p.add_argument("--outtype", default="f16", choices=["f16", "bf16", "f32", "q8_0"],
                   help="text model tensor type; the projector is always f16 (f32 with --outtype f32)")
    p.add_argument("--quant", metavar="TYPE", help="then quantize the text model with llama.cpp (e.g. Q4_K_M)")
    p.add_argument("--imatrix", metavar="FILE", help="with --quant: importance matrix (llama-imatrix GGUF or .dat)")
    p.add_argument("--keep-intermediate", action="store_true",
                   help="with --quant: keep the unquantized text GGUF (recorded in manifest.json)")
    p.add_argument("--family", help="override family detection (2.6, 4.0, 4.5, 4.6 or minicpmv-X)")
    add_threads(p, "threads converting tensors and quantizing",
                "min(4, cores) converting, physical cores quantizing")
    add_json(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ._output import emit

    from minicpmv_edge.convert import convert

    # the progress bar (bytes, rate, ETA) comes from the converter itself (minicpmv_edge.progress)
    res = convert(args.src, args.out, outtype=args.outtype, family=args.family,
                  quant=args.quant, keep_intermediate=args.keep_intermediate, threads=args.threads,
                  imatrix=args.imatrix)
    summary = {
        "family": res.manifest.family,
        "text": str(res.text_path),
        "mmproj": str(res.mmproj_path),
        "manifest": str(res.text_path.parent / "manifest.json"),
        "seconds": round(res.seconds, 3),
        "source_mb": round(res.source_bytes / 1e6, 1),
    }
    emit(summary, args.json, [(k, summary[k]) for k in ("family", "text", "mmproj", "manifest")]
         + [("took", f"{summary['seconds']} s for {summary['source_mb']} MB")])
    return 0
