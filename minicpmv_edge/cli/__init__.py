"""`minicpmv-edge`: a tiny root that wires one module per subcommand.

Each subcommand module exposes `add_parser(subparsers)` and `run(args) -> int`;
modules are imported only when their subcommand runs, so `convert` never loads
llama.cpp and `chat` never loads the converter. Every EdgeError becomes one
line on stderr and its exit code; MINICPMV_EDGE_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from .. import __version__
from ..errors import EdgeError
from ._common import HelpFormatter, Parser

# subcommand -> module (each a file of its own)
SUBCOMMANDS = {
    "convert": "minicpmv_edge.cli.convert_cmd",
    "inspect": "minicpmv_edge.cli.inspect_cmd",
    "demo": "minicpmv_edge.cli.demo_cmd",
    "chat": "minicpmv_edge.cli.chat_cmd",
    "quantize": "minicpmv_edge.cli.quantize_cmd",
    "quality": "minicpmv_edge.cli.quality_cmd",
    "export-vision": "minicpmv_edge.cli.export_vision_cmd",
    "serve": "minicpmv_edge.cli.serve_cmd",
}


def build_parser() -> Parser:
    p = Parser(
        prog="minicpmv-edge", formatter_class=HelpFormatter,
        description="Convert, quantize and run MiniCPM-V (2.6, 4.0, 4.5, 4.6) on-device with llama.cpp.",
        epilog="Run `minicpmv-edge demo` for a self-contained tour on a tiny synthetic model.",
    )
    p.add_argument("--version", action="version", version=f"minicpmv-edge {__version__}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show progress details and llama.cpp's own log on stderr (also after COMMAND)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.command:
        parser.print_help()
        return 2
    from .. import progress

    progress.enable(sys.stderr.isatty() and not getattr(args, "json", False))
    try:
        return int(args.run(args) or 0)
    except EdgeError as exc:
        if os.environ.get("MINICPMV_EDGE_DEBUG"):
            raise
        print(f"minicpmv-edge {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"minicpmv-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
