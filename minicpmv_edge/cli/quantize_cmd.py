"""`minicpmv-edge quantize IN.gguf OUT.gguf --type Q4_K_M`: text models via llama.cpp, projectors in numpy."""

from __future__ import annotations


EXAMPLES = """examples:
  minicpmv-edge quantize out/v45/minicpmv-4.5-text-f16.gguf out/v45/text-q4_k_m.gguf --type Q4_K_M
  minicpmv-edge quantize text-f16.gguf text-iq4_xs.gguf --type IQ4_XS --imatrix imatrix.gguf
  minicpmv-edge quantize text-f16.gguf text-q4_k_m.gguf --type Q4_K_M --output-tensor-type q8_0
  minicpmv-edge quantize out/v45/minicpmv-4.5-mmproj-f16.gguf mmproj-q8_0.gguf --type Q8_0

text types: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K
            IQ4_NL IQ4_XS BF16 F16 F32; with --imatrix also Q2_K_S IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ1_S IQ1_M IQ3_XXS
projector (mmproj) types: F16 (default) F32 Q8_0 Q5_1 Q5_0 Q4_1 Q4_0; never BF16"""


def add_parser(sub) -> None:
    from ._common import add_command, add_json, add_threads, threads_type

    p = add_command(sub, "quantize", "quantize a text GGUF (llama.cpp) or a vision projector GGUF", EXAMPLES)
    p.add_argument("inp", metavar="IN.gguf")
    p.add_argument("out", metavar="OUT.gguf")
    # llama-quantize's positional form: IN OUT TYPE [THREADS]
    p.add_argument("pos_type", nargs="?", metavar="TYPE", help="quantization type, as llama-quantize takes it")
    p.add_argument("pos_threads", nargs="?", type=threads_type, metavar="THREADS",
                   help="threads, as llama-quantize takes them (same as -t)")
    p.add_argument("--type", default=None, help="quantization type (text default Q4_K_M; projector default F16)")
    p.add_argument("--imatrix", metavar="FILE", help="importance matrix (llama-imatrix GGUF or legacy .dat)")
    p.add_argument("--output-tensor-type", metavar="TYPE", help="ggml type for output.weight, e.g. q8_0")
    p.add_argument("--token-embedding-type", metavar="TYPE", help="ggml type for token_embd.weight, e.g. q8_0")
    p.add_argument("--allow-requantize", action="store_true", help="accept an already-quantized input (lossy)")
    add_threads(p, "llama.cpp quantizer threads")
    add_json(p)
    p.set_defaults(run=run)


def _merge_positional(args) -> None:
    """TYPE/THREADS given both ways must agree; either way fills args.type / args.threads."""
    from minicpmv_edge.errors import InputError

    for pos, opt, flag in (("pos_type", "type", "--type"), ("pos_threads", "threads", "-t/--threads")):
        given, named = getattr(args, pos), getattr(args, opt)
        if given is not None and named is not None and str(given).upper() != str(named).upper():
            raise InputError(f"{flag} {named} disagrees with the positional {opt.upper()} {given}")
        if given is not None:
            setattr(args, opt, given)


def run(args) -> int:
    from ._output import emit

    from minicpmv_edge.gguf_info import read_info

    _merge_positional(args)

    info = read_info(args.inp, tensors=False)
    if info.is_mmproj:
        from minicpmv_edge.quantize import quantize_file

        res = quantize_file(args.inp, args.out, args.type or "F16", allow_requantize=args.allow_requantize,
                            imatrix=args.imatrix, output_tensor_type=args.output_tensor_type,
                            token_embedding_type=args.token_embedding_type)
        summary = {"kind": "mmproj", "out": str(res.path), "type": res.type, "bytes": res.bytes,
                   "seconds": round(res.seconds, 3), "tensor_types": res.types}
    else:
        from minicpmv_edge.quantize.llama import quantize_text

        res = quantize_text(args.inp, args.out, args.type or "Q4_K_M", imatrix=args.imatrix,
                            output_tensor_type=args.output_tensor_type,
                            token_embedding_type=args.token_embedding_type,
                            allow_requantize=args.allow_requantize, nthread=args.threads)
        summary = {"kind": "text", "out": str(res.path), "type": res.ftype, "bytes": res.bytes,
                   "seconds": round(res.seconds, 3), "input_bytes": res.input_bytes}
    emit(summary, args.json, [(summary["kind"], summary["out"]), ("type", summary["type"]),
                              ("size", f"{summary['bytes'] / 1e6:.1f} MB"), ("took", f"{summary['seconds']} s")])
    return 0
