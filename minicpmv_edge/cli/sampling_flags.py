"""The sampling, constrained-output and reasoning flags of `chat` and `run`, named as llama.cpp names them.

Each flag maps to one argument of MiniCPMV.chat (docs/api-fields.md has the table). Flags
left unset take the model's defaults (its generation_config.json, written into the GGUF as
general.sampling.*, else the model card's), as llama.cpp's tools do.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from ._common import float_range, int_range

_MODEL = "(default: the model's, from generation_config.json; else %s)"


def _logit_bias(text: str) -> tuple[int, float]:
    """llama.cpp's form TOKEN_ID(+/-)BIAS: 15043+1, 15043-0.5, 15043-inf."""
    m = re.fullmatch(r"\s*(\d+)\s*([+-]\s*(?:inf|[0-9.]+(?:[eE][+-]?\d+)?))\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID(+/-)BIAS such as 15043+1 or 15043-inf, got {text!r}")
    bias = float(m.group(2).replace(" ", ""))
    if bias == math.inf:
        raise argparse.ArgumentTypeError("a bias of +inf is not allowed (use a large number)")
    return int(m.group(1)), bias


def add_sampling_flags(p) -> None:
    g = p.add_argument_group("sampling (llama.cpp's names; unset = the model's defaults)")
    g.add_argument("-n", "--n-predict", "--predict", "--max-tokens", dest="max_tokens", default=512, metavar="N",
                   type=int_range(-1, None, "a token count"),
                   help="tokens to generate at most; -1 = until the end of generation or a full context")
    g.add_argument("--temp", type=float_range(0.0, None), default=None, metavar="T",
                   help="temperature, 0 = greedy " + _MODEL % "0.7")
    g.add_argument("--top-k", type=int_range(0, None), default=None, metavar="K",
                   help="top-k sampling, 0 = off " + _MODEL % "100")
    g.add_argument("--top-p", type=float_range(0.0, 1.0), default=None, metavar="P",
                   help="top-p (nucleus) sampling, 1.0 = off " + _MODEL % "0.8")
    g.add_argument("--min-p", type=float_range(0.0, 1.0), default=None, metavar="P",
                   help="min-p sampling, 0.0 = off " + _MODEL % "0.0")
    g.add_argument("--typical", "--typical-p", dest="typical_p", type=float_range(0.0, 1.0, lo_open=True),
                   default=None, metavar="P", help="locally typical sampling, 1.0 = off (default: 1.0)")
    g.add_argument("--repeat-penalty", type=float_range(0.0, None, lo_open=True), default=None, metavar="X",
                   help="repetition penalty, 1.0 = off " + _MODEL % "1.05")
    g.add_argument("--repeat-last-n", type=int_range(-1, None), default=None, metavar="N",
                   help="tokens the penalties look back over; 0 = off, -1 = the context size " + _MODEL % "64")
    g.add_argument("--presence-penalty", type=float_range(), default=None, metavar="X",
                   help="presence penalty, 0.0 = off (default: 0.0)")
    g.add_argument("--frequency-penalty", type=float_range(), default=None, metavar="X",
                   help="frequency penalty, 0.0 = off (default: 0.0)")
    g.add_argument("-s", "--seed", type=int_range(-1, 2**32 - 2, "a seed"), default=-1, metavar="SEED",
                   help="random seed; -1 = a random one (printed with --json)")
    g.add_argument("--ignore-eos", action="store_true",
                   help="never end the answer at an end-of-generation token (stops at -n or a full context)")
    g.add_argument("-l", "--logit-bias", type=_logit_bias, action="append", default=[], metavar="TOKEN_ID(+/-)BIAS",
                   help="change a token's likelihood, e.g. 15043+1 or 15043-inf to ban it (repeatable)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the answer before TEXT (repeatable)")
    c = p.add_argument_group("constrained output (the grammar applies to the answer, after any thinking)")
    c.add_argument("--grammar", metavar="GBNF|FILE",
                   help="a GBNF grammar: its text (containing ::=) or a file that holds it")
    c.add_argument("--grammar-file", metavar="FILE", help="a file with a GBNF grammar")
    c.add_argument("-j", "--json-schema", metavar="JSON|@FILE",
                   help="a JSON schema the answer must validate against: inline JSON or @FILE")
    c.add_argument("-jf", "--json-schema-file", metavar="FILE", help="a file with a JSON schema")
    r = p.add_argument_group("reasoning (thinking models: --think)")
    r.add_argument("--reasoning-format", choices=("auto", "deepseek", "none"), default="auto",
                   help="auto/deepseek: the thought is shown apart (JSON: 'reasoning'); none: left in the text")
    r.add_argument("--reasoning-budget", type=int_range(-1, None, "a token count"), default=-1, metavar="N",
                   help="close the thought after N tokens and answer; -1 = unlimited, 0 = answer at once")
    r.add_argument("--reasoning-budget-message", default="", metavar="TEXT",
                   help="text put before the closing tag when the budget runs out")
    p.add_argument("--n-probs", "--top-logprobs", dest="n_probs", type=int_range(0, 20), default=None, metavar="N",
                   help="with --json: each token's log-probability and its N best alternatives (0-20)")


def sampling_kwargs(args) -> dict:
    """MiniCPMV.chat keyword arguments from the flags (InputError for bad files or combinations)."""
    from minicpmv_edge.errors import InputError

    kw = dict(max_tokens=args.max_tokens, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
              min_p=args.min_p, typical_p=args.typical_p, repeat_penalty=args.repeat_penalty,
              repeat_last_n=args.repeat_last_n, presence_penalty=args.presence_penalty,
              frequency_penalty=args.frequency_penalty, seed=args.seed, ignore_eos=args.ignore_eos,
              reasoning_format=args.reasoning_format, thinking_budget=args.reasoning_budget,
              thinking_budget_message=args.reasoning_budget_message)
    kw = {k: v for k, v in kw.items() if v is not None}
    if args.logit_bias:
        kw["logit_bias"] = list(args.logit_bias)
    if args.stop:
        kw["stop"] = list(args.stop)
    grammars = [n for n in ("grammar", "grammar_file", "json_schema", "json_schema_file") if getattr(args, n)]
    if len(grammars) > 1:
        raise InputError("give only one of --grammar, --grammar-file, --json-schema, --json-schema-file")
    if args.grammar:
        kw["grammar"] = args.grammar if "::=" in args.grammar else _read(args.grammar, "--grammar")
    elif args.grammar_file:
        kw["grammar"] = _read(args.grammar_file, "--grammar-file")
    elif args.json_schema:
        text = _read(args.json_schema[1:], "--json-schema") if args.json_schema.startswith("@") else args.json_schema
        kw["json_schema"] = _json(text, "--json-schema")
    elif args.json_schema_file:
        kw["json_schema"] = _json(_read(args.json_schema_file, "--json-schema-file"), "--json-schema-file")
    if args.n_probs is not None:
        if not args.json:
            raise InputError("--n-probs needs --json (log-probabilities are part of the JSON result)")
        kw.update(logprobs=True, top_logprobs=args.n_probs)
    return kw


def _read(path: str, flag: str) -> str:
    from minicpmv_edge.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{flag}: no such file (a grammar given inline must contain ::=)" if flag == "--grammar"
                         else f"{flag}: no such file", path)
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{flag}: cannot read it ({exc.__class__.__name__})", path) from None


def _json(text: str, flag: str):
    from minicpmv_edge.errors import InputError

    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"{flag}: not valid JSON ({exc})") from None
