"""Tool calls in each family's own format: recognise, parse, stream, and constrain them.

The chat template shows a model its tools and how to call them; the format follows from
the template itself (the one source of truth), so it is detected there:

* "json" (MiniCPM-V 4.5, Qwen3/Hermes style): `<tool_call>\\n{"name": N, "arguments": {...}}\\n</tool_call>`
* "xml" (4.6 / 4.7 / OCR, Qwen3-Coder style): `<tool_call>\\n<function=N>\\n<parameter=P>\\nVALUE\\n</parameter>\\n
  ...</function>\\n</tool_call>`; VALUE is raw text for string parameters and JSON otherwise (the
  template writes mappings and lists with tojson, other values with `string`).

Several calls follow each other (parallel calls). `tool_choice: required` or a named function gets
a grammar built from the tools' parameter schemas, so the calls always parse; `auto` gets the same
grammar lazily, from the first `<tool_call>` on; `none` bans the opening tag.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from minicpmv_edge.errors import InputError

from .grammar import Grammar
from .schema_grammar import schemas_to_gbnf

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text (OpenAI's form)
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def as_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def detect_format(template_source: str | None) -> str | None:
    """"json" | "xml" | None (the template has no tool calls)."""
    if not template_source or OPEN not in template_source:
        return None
    if "<function=" in template_source:
        return "xml"
    if '"arguments"' in template_source or "arguments" in template_source:
        return "json"
    return None


def check_tools(tools) -> list[dict]:
    """OpenAI tool definitions -> the list the template gets (each {"type": "function", "function": {...}})."""
    if not isinstance(tools, (list, tuple)) or not tools:
        raise InputError("tools must be a non-empty list")
    out, names = [], set()
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise InputError(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}')
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise InputError(f"tools[{i}].function.name must be 1-64 letters, digits, _ . or -")
        if name in names:
            raise InputError(f"tools[{i}]: the function name {name!r} is given twice")
        names.add(name)
        params = fn.get("parameters")
        if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
            raise InputError(f'tools[{i}].function.parameters must be a JSON schema of "type": "object"')
        out.append({"type": "function", "function": {k: v for k, v in fn.items() if v is not None}})
    return out


def _params(tool: dict) -> dict:
    p = tool["function"].get("parameters") or {"type": "object", "properties": {}}
    return {"type": "object", **p}


# --- parsing ------------------------------------------------------------------------
def parse_call(block: str, fmt: str, tools: list[dict]) -> ToolCall | None:
    """The text between <tool_call> and </tool_call> -> a call, or None when it is not one."""
    by_name = {t["function"]["name"]: t for t in tools}
    if fmt == "json":
        try:
            obj = json.loads(block)
        except ValueError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        args = obj.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))
    m = re.fullmatch(r"\s*<function=([^>\n]+)>\n?(.*?)\n?</function>\s*", block, re.S)
    if not m:
        return None
    name, body = m.group(1).strip(), m.group(2)
    props = _params(by_name[name]).get("properties", {}) if name in by_name else {}
    args = {}
    pos = 0
    for pm in re.finditer(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>\n?", body, re.S):
        if body[pos:pm.start()].strip():
            return None
        pos = pm.end()
        key = pm.group(1).strip()
        args[key] = _xml_value(pm.group(2), props.get(key) or {})
    if body[pos:].strip():
        return None
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def _xml_value(text: str, schema: dict):
    """A parameter's text -> its value, by the parameter's schema (qwen3_coder's rules)."""
    types = schema.get("type")
    types = types if isinstance(types, list) else [types] if types else []
    if text == "None" and ("null" in types or not types):
        return None  # the template writes Python's None with `string`
    if "string" in types or (not types and schema.get("enum") and all(isinstance(e, str) for e in schema["enum"])):
        return text
    if text in ("True", "False") and ("boolean" in types or not types):
        return text == "True"  # ... and Python's booleans
    try:
        return json.loads(text)
    except ValueError:
        return text


def split_calls(text: str, fmt: str, tools: list[dict]) -> tuple[str, list[ToolCall]]:
    """The answer -> (content before the calls, calls). A block that does not parse stays content."""
    calls: list[ToolCall] = []
    content_end = None
    pos = 0
    for m in re.finditer(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), text, re.S):
        call = parse_call(m.group(1).strip("\n"), fmt, tools)
        if call is None:
            continue
        if content_end is None:
            content_end = m.start()
        calls.append(call)
        pos = m.end()
    if not calls:
        return text, []
    content = text[:content_end].rstrip()
    rest = text[pos:].strip()
    return (content + ("\n" + rest if rest else "")).strip("\n") if rest else content, calls


class ToolStream:
    """Streaming: answer text in, content pieces and whole calls out. Text from an opening tag on is held
    until its closing tag completes the call; a partial opening tag at the end is held too."""

    def __init__(self, fmt: str, tools: list[dict]):
        self.fmt, self.tools = fmt, tools
        self.buf = ""

    def feed(self, text: str) -> list:
        self.buf += text
        out: list = []
        while True:
            i = self.buf.find(OPEN)
            if i < 0:
                keep = _partial(self.buf, OPEN)
                if len(self.buf) > keep:
                    out.append(self.buf[:len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                return out
            if i:
                out.append(self.buf[:i])
                self.buf = self.buf[i:]
            j = self.buf.find(CLOSE)
            if j < 0:
                return out
            block, self.buf = self.buf[len(OPEN):j], self.buf[j + len(CLOSE):]
            call = parse_call(block.strip("\n"), self.fmt, self.tools)
            out.append(call if call is not None else OPEN + block + CLOSE)

    def flush(self) -> list:
        rest, self.buf = self.buf, ""
        return [rest] if rest else []


def _partial(text: str, tag: str) -> int:
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


# --- grammar ------------------------------------------------------------------------
def call_grammar(fmt: str, tools: list[dict], choice, parallel: bool) -> Grammar:
    """GBNF for one call (or several, `parallel`) of the allowed tools; lazy (from the first <tool_call>)
    when the model may also answer without a call (`choice` "auto")."""
    if isinstance(choice, dict):
        allowed = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
    else:
        allowed = tools
    names = {f"tool-{i}": _params(t) for i, t in enumerate(allowed)}
    rules, roots = schemas_to_gbnf(names, xml_strings=fmt == "xml")
    calls = []
    for i, t in enumerate(allowed):
        name = t["function"]["name"]
        if fmt == "json":
            head = _lit(OPEN + '\n{"name": "' + name + '", "arguments": ')
            calls.append(f'{head} {roots[f"tool-{i}"]} {_lit("}" + chr(10) + CLOSE)}')
        else:
            calls.append(f'{_lit(OPEN + chr(10) + "<function=" + name + ">" + chr(10))} {roots[f"tool-{i}"]} '
                         f'{_lit("</function>" + chr(10) + CLOSE)}')
    rules["tool-call"] = " | ".join(f"( {c} )" for c in calls)
    rules["root"] = 'tool-call ( "\\n" tool-call )*' if parallel else "tool-call"
    gbnf = "\n".join(f"{k} ::= {v}" for k, v in sorted(rules.items()))
    return Grammar(gbnf, "tool_calls", triggers=(OPEN,) if choice == "auto" else ())


def _lit(text: str) -> str:
    return json.dumps(text)  # a GBNF literal: the same escapes as a JSON string


@dataclass(frozen=True)
class ToolPlan:
    tools: list  # for the chat template (and the parser)
    fmt: str | None  # "json" | "xml"; None: calls are not parsed (tool_choice none)
    grammar: Grammar | None  # tool_choice required / named (whole answer), auto (lazy)
    ban_open: bool  # tool_choice none: the opening tag may not be generated


def plan(template_source: str | None, tools, tool_choice, parallel: bool | None = None,
         constrained: bool = False) -> ToolPlan:
    """What `tools` / `tool_choice` / `parallel_tool_calls` (None: true) mean for one request (InputError
    when they cannot be honoured). `constrained`: the request also has a grammar or response_format."""
    if tools is None:
        for name, value in (("tool_choice", tool_choice), ("parallel_tool_calls", parallel)):
            if value is not None:  # as OpenAI: it would change nothing
                raise InputError(f"{name} needs tools")
        return ToolPlan([], None, None, False)
    parallel = True if parallel is None else parallel
    checked = check_tools(tools)
    fmt = detect_format(template_source)
    if fmt is None:
        raise InputError("tools: this model's chat template has no tool calling")
    if not isinstance(parallel, bool):
        raise InputError("parallel_tool_calls must be true or false")
    choice = "auto" if tool_choice is None else tool_choice
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if name not in {t["function"]["name"] for t in checked}:
            raise InputError(f"tool_choice names the function {name!r}, which is not among the tools")
    elif choice not in ("auto", "none", "required"):
        raise InputError(f'tool_choice must be "auto", "none", "required" or a named function, got {choice!r}')
    if choice == "none":
        return ToolPlan(checked, None, None, True)
    if constrained:
        raise InputError(f"tool_choice {choice if isinstance(choice, str) else 'naming a function'} cannot be "
                         "combined with response_format, grammar or json_schema (one grammar shapes the answer); "
                         'use tool_choice "none" with them')
    return ToolPlan(checked, fmt, call_grammar(fmt, checked, choice, parallel), False)


def tool_fields(msg: dict, n: int) -> dict:
    """A message's tool keys, as chat templates read them: an assistant's `tool_calls` (arguments as an
    object, as vLLM and llama-server hand them to templates; clients send JSON text) and a tool result's
    `tool_call_id`."""
    out: dict = {}
    calls = msg.get("tool_calls")
    if calls is not None:
        if msg.get("role") != "assistant" or not isinstance(calls, list):
            raise InputError(f"message {n}: tool_calls must be a list on an assistant message")
        norm = []
        for i, c in enumerate(calls):
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise InputError(f"message {n}: tool_calls[{i}] needs a function with a name")
            args = fn.get("arguments", {})
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except ValueError:
                    raise InputError(f"message {n}: tool_calls[{i}].function.arguments is not valid JSON") from None
            if not isinstance(args, dict):
                raise InputError(f"message {n}: tool_calls[{i}].function.arguments must be a JSON object")
            norm.append({"id": c.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": args}})
        out["tool_calls"] = norm
    if msg.get("role") == "tool":
        cid = msg.get("tool_call_id")
        if cid is not None and not isinstance(cid, str):
            raise InputError(f"message {n}: tool_call_id must be a string")
        if cid is not None:
            out["tool_call_id"] = cid
    return out
