"""What every subcommand shares: one help formatter, the common flags, checked numbers.

Subcommands are built with `add_command(...)`, which gives each one `-v` (accepted
after the subcommand too, as llama.cpp users type it) and help text that shows every
default. `add_threads`, `add_json` and `add_load_flags` add the flags of commands that
compute, print results, or load a model; numbers are range-checked here, by argparse,
so `-t 100000`, `--temp nan` or `--port 99999` exit 2 with one line naming the flag
before anything is loaded.
"""

from __future__ import annotations

import argparse
import math

GGML_MAX_N_THREADS = 512  # ggml/include/ggml.h:225; ggml aborts on more


class Parser(argparse.ArgumentParser):
    """argparse's errors as one line (no usage block), exit code 2: the house rule for bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout and appends `(default: X)` to every option that has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or not action.option_strings or default is None or default is False
                or default == [] or default == "" or default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _verbose_parent() -> argparse.ArgumentParser:
    # SUPPRESS: a subcommand without -v must not overwrite `minicpmv-edge -v COMMAND`
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show progress details and llama.cpp's own load/offload log on stderr")
    return p


def add_command(sub, name: str, help: str, examples: str = "", description: str | None = None):
    """A subcommand parser with the shared formatter and -v."""
    return sub.add_parser(name, help=help, description=description or help, epilog=examples or None,
                          formatter_class=HelpFormatter, parents=[_verbose_parent()])


# --- checked number types (argparse turns ArgumentTypeError into "argument -t/--threads: ...", exit 2) ----
def int_range(lo: int | None = None, hi: int | None = None, name: str = "an integer"):
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {_bounds(lo, hi)}, got {value}")
        return value

    parse.__name__ = name  # argparse names the type in its own messages
    return parse


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False, name: str = "a number"):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {_bounds(lo, hi, lo_open)}, got {text}")
        return value

    parse.__name__ = name
    return parse


def _bounds(lo, hi, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{'>' if lo_open else 'between'} {lo}{' and <= ' if lo_open else ' and '}{hi}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"<= {hi}"


threads_type = int_range(1, GGML_MAX_N_THREADS, "a thread count")
port_type = int_range(1, 65535, "a TCP port")
positive_int = int_range(1, None, "a positive integer")
positive_float = float_range(0.0, None, lo_open=True, name="a positive number")


def add_threads(p, what: str = "CPU threads", default: str = "physical cores") -> None:
    p.add_argument("-t", "--threads", type=threads_type, default=None, metavar="N",
                   help=f"{what} (default: {default}; at most {GGML_MAX_N_THREADS})")


def add_json(p) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


# --- flags of the commands that load a model (chat, run, serve) ---------------------------------
def add_load_flags(p) -> None:
    add_threads(p)
    p.add_argument("-c", "--ctx-size", type=int_range(0, None, "a context size"), default=4096, metavar="N",
                   help="context size in tokens; 0 = the model's training context (as llama.cpp)")
    p.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int_range(-1, None, "a layer count"), default=0,
                   metavar="N",
                   help="layers to offload to the GPU, -1 = all (needs a Metal/CUDA/Vulkan build of llama.cpp)")
    p.add_argument("--mmproj-gpu", "--mmproj-offload", action="store_true",
                   help="run the vision encoder on the GPU backend (needs a GPU build of llama.cpp)")
    p.add_argument("--max-slices", "--max-slice-nums", type=int_range(1, 64, "a slice count"), default=None,
                   metavar="N", help="slice budget per image (LLaVA-UHD max_slice_nums; the model cards suggest 36 "
                   "for documents, 1 for video); 2.6/4.0/4.5 (sliced by mtmd) at most 9 (default: the model's)")
    p.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                   help="downscale each image to at most N pixels before slicing (a budget, unlike "
                   "--image-max-pixels, which refuses larger images)")
    p.add_argument("--image-max-pixels", type=positive_int, default=None, metavar="N",
                   help="refuse larger images (default: 16777216, 4096x4096)")
    from minicpmv_edge.encoder_options import MMPROJ_TYPES, ONNX_PRECISIONS, VISION_ENCODERS

    p.add_argument("--vision-encoder", choices=VISION_ENCODERS, default="auto",
                   help="image encoder: llama.cpp's (mtmd), an export-vision ONNX folder run by ONNX Runtime, or "
                   "auto: this platform's measured default (README: what makes an image fast)")
    p.add_argument("--mmproj-type", choices=MMPROJ_TYPES, default=None, type=str.lower,
                   help="store the projector as this type for llama.cpp's encoder (a copy is made once into "
                   "the cache folder); default: the platform's measured choice (auto) or the file as given (mtmd)")
    p.add_argument("--vision-onnx", metavar="DIR", help="the export-vision folder for --vision-encoder onnx "
                   "(default for a converted folder: OUT_DIR/vision-onnx)")
    p.add_argument("--onnx-precision", choices=ONNX_PRECISIONS, default="fp32",
                   help="ONNX graph: fp32, fp16, or int8 (made once from fp32 by dynamic quantization)")
    p.add_argument("--image-cache", metavar="DIR", help="keep image embeddings in DIR across runs, so an image "
                   "seen before is not encoded again (checked, bounded by --image-cache-mb)")
    p.add_argument("--image-cache-mb", type=positive_int, default=1024, metavar="MB",
                   help="size cap of --image-cache")


def load_options(args):
    """LoadOptions from the flags of `add_load_flags` (validated again by the runtime)."""
    from pathlib import Path

    from minicpmv_edge.edge_runtime import LoadOptions

    extra = {"image_max_pixels": args.image_max_pixels} if args.image_max_pixels else {}
    onnx = args.vision_onnx
    if args.vision_encoder == "onnx" and onnx is None and getattr(args, "folder", None):
        onnx = str(Path(args.folder) / "vision-onnx")  # the folder beside a converted model
    return LoadOptions(n_ctx=args.ctx_size, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                       mmproj_gpu=args.mmproj_gpu, max_slices=args.max_slices, max_pixels=args.max_pixels,
                       vision_encoder=args.vision_encoder, mmproj_type=args.mmproj_type, vision_onnx=onnx,
                       onnx_precision=args.onnx_precision, image_cache_dir=args.image_cache,
                       image_cache_mb=args.image_cache_mb, **extra)
