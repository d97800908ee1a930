"""`minicpmv-edge serve OUT_DIR` / `serve -m MODEL.gguf --mmproj MMPROJ.gguf`: an OpenAI-compatible server.

POST /v1/chat/completions (JSON or SSE), GET /v1/models, GET /health, GET / (a chat page),
GET /metrics (Prometheus), GET /props. One model is shared by all requests: up to --parallel of
them are decoded together (slots of one llama.cpp context), the rest wait in a bounded queue.
Needs the `server` extra: pip install 'minicpmv-edge[server]'.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import InputError

EXAMPLES = """examples:
  minicpmv-edge serve out/v45                                   # http://127.0.0.1:8080/v1
  minicpmv-edge serve -m text.gguf --mmproj mmproj.gguf --port 9000 --api-key s3cret
  minicpmv-edge serve out/v45 --media-dir ./images --allow-remote-media --max-queue 4
  minicpmv-edge serve out/v46 --parallel 8 -c 8192 --host 0.0.0.0   # 8 people at once, 8192 tokens each
  minicpmv-edge serve out/v46 --cors-origin https://chat.example.org   # a web UI on another origin may call us
  # open http://127.0.0.1:8080/ in a browser to chat

  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d '{
    "model": "v45", "messages": [{"role": "user", "content": [
      {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
      {"type": "text", "text": "What is in the picture?"}]}],
    "chat_template_kwargs": {"enable_thinking": true}}'"""


def add_parser(sub) -> None:
    from ._common import add_command, add_load_flags, float_range, int_range, port_type, positive_float, positive_int

    p = add_command(sub, "serve", "serve a model over an OpenAI-compatible HTTP API", EXAMPLES)
    p.add_argument("folder", nargs="?", metavar="OUT_DIR", help="a converted folder (manifest.json)")
    p.add_argument("-m", "--model", metavar="MODEL.gguf", help="text GGUF (instead of OUT_DIR)")
    p.add_argument("--mmproj", metavar="MMPROJ.gguf", help="vision projector (with -m)")
    p.add_argument("--model-name", help="model id clients send (default: the folder or file name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_type, default=8080, help="TCP port, 1-65535")
    p.add_argument("--api-key", default=os.environ.get("MINICPMV_EDGE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/ (default: $MINICPMV_EDGE_API_KEY, else none)")
    p.add_argument("-np", "--parallel", type=int_range(1, 64, "a slot count"), default=None,
                   help="requests decoded at once, each in a slot of one llama.cpp context with -c tokens "
                        "(default: 4 on 2 or more cores, 1 on one core, fewer if the KV cache of all slots "
                        "would take over half the available memory)")
    p.add_argument("--max-queue", type=int_range(0, 1 << 16, "a request count"), default=16,
                   help="requests that may wait for a free slot; more get 429")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let browser pages from ORIGIN call the API (repeatable; '*' = any origin); "
                        "default: no CORS headers")
    p.add_argument("--request-timeout", type=positive_float, default=300.0, help="seconds per request, queue included")
    p.add_argument("--max-body-mb", type=float_range(0.0, 1 << 20, lo_open=True), default=20.0,
                   help="request body cap in MB")
    p.add_argument("--max-images", type=positive_int, default=8, help="images per request")
    p.add_argument("--max-tokens-limit", type=positive_int, default=4096, help="largest max_tokens accepted")
    p.add_argument("--default-max-tokens", type=positive_int, default=512, help="max_tokens when a request names none")
    p.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) image URLs")
    p.add_argument("--remote-max-mb", type=float_range(0.0, 1 << 20, lo_open=True), default=20.0,
                   help="size cap on a fetched image in MB")
    p.add_argument("--remote-timeout", type=positive_float, default=10.0, help="seconds to fetch a remote image")
    p.add_argument("--media-dir", metavar="DIR", help="allow local paths / file:// URLs inside DIR only")
    add_load_flags(p)
    p.set_defaults(run=run)


def _paths(args) -> tuple[Path, Path | None, str]:
    if args.folder and args.model:
        raise InputError("give either OUT_DIR or -m MODEL.gguf, not both")
    if args.folder and Path(args.folder).is_file():  # as chat/run: say which form fits
        raise InputError(f"`serve` takes a converted folder; for GGUF files use: minicpmv-edge serve -m {args.folder} "
                         "--mmproj MMPROJ.gguf", args.folder)
    if args.model and Path(args.model).is_dir():
        raise InputError(f"`serve -m` takes a GGUF file; for a converted folder use: minicpmv-edge serve {args.model}",
                         args.model)
    if args.folder:
        from ..manifest import Manifest

        m = Manifest.load(args.folder)
        return Path(m.path_of(args.folder, "text")), Path(m.path_of(args.folder, "mmproj")), \
            Path(args.folder).resolve().name
    if not args.model:
        raise InputError("give a converted folder (OUT_DIR) or -m MODEL.gguf [--mmproj MMPROJ.gguf]")
    for p in (args.model, args.mmproj):
        if p and not Path(p).is_file():
            raise InputError("file does not exist", p)
    return Path(args.model), Path(args.mmproj) if args.mmproj else None, Path(args.model).stem


def _check(args) -> None:
    for name in ("max_queue", "max_images", "max_tokens_limit", "default_max_tokens"):
        if getattr(args, name) < (0 if name == "max_queue" else 1):
            raise InputError(f"--{name.replace('_', '-')} is too small")
    if args.request_timeout <= 0 or args.max_body_mb <= 0 or args.remote_max_mb <= 0:
        raise InputError("--request-timeout, --max-body-mb and --remote-max-mb must be positive")
    if args.media_dir and not Path(args.media_dir).is_dir():
        raise InputError("--media-dir is not a directory", args.media_dir)


def _precheck_model(args, text: Path, mmproj: Path | None) -> None:
    from minicpmv_edge.edge_runtime.load_checks import resolve_n_ctx
    from minicpmv_edge.edge_runtime.pool import size_slots
    from minicpmv_edge.gguf_info import check_pair, read_info

    from ._common import load_options

    info = check_pair(text, mmproj)[0] if mmproj else read_info(text)
    n_ctx = resolve_n_ctx(load_options(args), info)
    size_slots(info, n_ctx, args.parallel, args.n_gpu_layers != 0)  # all slots' KV cache must fit


def _listen(host: str, port: int):
    """The listening socket, bound before anything is announced (uvicorn would report a busy
    port only after its own startup lines)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"--host {host!r} is not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse TIME_WAIT ports
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def run(args) -> int:
    from minicpmv_edge.extras import require

    require("server", "serve")
    require("runtime", "serve")
    from minicpmv_edge import progress

    progress.enable(False)  # a server's stderr is a log: no bars per request
    import uvicorn

    from minicpmv_edge.edge_runtime.server import MediaPolicy, ServerConfig, create_app
    _check(args)
    text, mmproj, default_name = _paths(args)
    _precheck_model(args, text, mmproj)  # a broken pair fails here, not after "serving ..." is printed
    sock = _listen(args.host, args.port)  # a busy port too
    config = ServerConfig(
        model_id=args.model_name or default_name, api_key=args.api_key or None, max_queue=args.max_queue,
        request_timeout_s=args.request_timeout, max_body_bytes=int(args.max_body_mb * 1e6),
        max_images=args.max_images, max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens,
        media=MediaPolicy(allow_remote=args.allow_remote_media,
                          media_dir=Path(args.media_dir).resolve() if args.media_dir else None,
                          remote_max_bytes=int(args.remote_max_mb * 1e6), remote_timeout_s=args.remote_timeout),
        parallel=args.parallel, n_ctx=args.ctx_size, cors_origins=tuple(args.cors_origin))

    def load():
        from dataclasses import replace

        from minicpmv_edge.edge_runtime import MiniCPMV
        from minicpmv_edge.edge_runtime.load_checks import MIN_CTX

        from ._common import load_options

        # the pool (one context of --parallel slots, -c tokens each) serves every request: the
        # model's own single-conversation context is not needed, so it gets the smallest size
        return MiniCPMV(text, mmproj, replace(load_options(args), n_ctx=MIN_CTX))

    failed: list[BaseException] = []

    def on_load_error(exc):
        failed.append(exc)
        server.should_exit = True

    # one log line per request from our logger; uvicorn's access log would be a second one
    logging.getLogger("minicpmv_edge.edge_runtime.server").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(config, load, on_load_error)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, access_log=False,
                                           log_level="warning", timeout_graceful_shutdown=5))
    print(f"serving {config.model_id!r} on http://{args.host}:{args.port}/v1 (loading the model...)", flush=True)
    server.run(sockets=[sock])
    if failed:
        exc = failed[0]
        if isinstance(exc, InputError):
            raise exc
        raise InputError(f"cannot load the model: {exc}")
    return 0
