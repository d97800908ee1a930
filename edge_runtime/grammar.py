"""Constrained output through llama.cpp's grammar sampler (llama_sampler_init_grammar).

A `Grammar` is GBNF text plus how it applies: from the first generated token, or lazily
from the first trigger word on (tool calls in `tool_choice: auto`). It comes from
GBNF written by the user, a JSON schema (schema_grammar.py), `{"type": "json_object"}`,
or OpenAI's `response_format`. `check(model)` compiles it once so that a broken grammar
is refused before any generation starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass

from minicpmv_edge.errors import InputError

from .schema_grammar import json_schema_to_gbnf

log = logging.getLogger(__name__)

# llama.cpp's own grammars/json.gbnf is equivalent; llama-server builds json_object from {"type": "object"} too
JSON_OBJECT_SCHEMA = {"type": "object"}
_STDERR_LOCK = threading.Lock()


@dataclass(frozen=True)
class Grammar:
    gbnf: str
    kind: str  # "grammar" | "json_schema" | "json_object" | "tool_calls"
    schema: dict | None = None  # the JSON schema it was made from (json_schema / json_object)
    triggers: tuple[str, ...] = ()  # lazy: the grammar takes over from the first of these words on

    def sampler(self, model):
        """A new llama.cpp grammar sampler over `model`'s vocabulary (InputError when llama.cpp refuses it)."""
        import llama_cpp as L

        with _captured_stderr() as err:
            if self.triggers:
                pats = [re.escape(t).encode() for t in self.triggers]
                arr = (ctypes.c_char_p * len(pats))(*pats)
                ptr = L.llama_sampler_init_grammar_lazy_patterns(
                    model.vocab, self.gbnf.encode(), b"root", arr, len(pats), None, 0)
            else:
                ptr = L.llama_sampler_init_grammar(model.vocab, self.gbnf.encode(), b"root")
        if not ptr:
            text = err.getvalue()
            m = re.search(r"error parsing grammar: (.*)", text)
            why = m.group(1).strip() if m else "see the log with -v"
            log.debug("llama.cpp refused the grammar:\n%s", text)
            raise InputError(f"{self.kind}: llama.cpp cannot parse the grammar ({why})")
        return ptr

    def check(self, model) -> "Grammar":
        import llama_cpp as L

        L.llama_sampler_free(self.sampler(model))
        return self


class _Captured:
    def __init__(self):
        self.text = ""

    def getvalue(self) -> str:
        return self.text


@contextlib.contextmanager
def _captured_stderr():
    """llama.cpp prints grammar parse errors with fprintf(stderr) (llama-grammar.cpp), together with the
    whole grammar: catch them at the file-descriptor level so that the reason can go into our one-line
    error. The window is one parse; whatever else landed in it is passed on to the real stderr."""
    got = _Captured()
    with _STDERR_LOCK, tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield got
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            got.text = tmp.read().decode("utf-8", "replace")
    other = "\n".join(x for x in got.text.splitlines() if x and "error parsing grammar" not in x
                      and "::=" not in x)
    if other and "error parsing grammar" not in got.text:
        os.write(2, (other + "\n").encode())


def from_gbnf(text) -> Grammar:
    if not isinstance(text, str) or not text.strip():
        raise InputError("grammar must be non-empty GBNF text")
    if not re.search(r"(?m)^\s*root\s*::=", text):
        raise InputError("grammar: GBNF needs a `root ::= ...` rule")
    return Grammar(text, "grammar")


def from_json_schema(schema, kind: str = "json_schema") -> Grammar:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InputError(f"{kind} is not valid JSON: {exc}") from None
    if isinstance(schema, dict) and not schema:
        schema = dict(JSON_OBJECT_SCHEMA)  # as llama-server: an empty schema means any object
    return Grammar(json_schema_to_gbnf(schema), kind, schema=schema)


def from_response_format(rf) -> Grammar | None:
    """OpenAI's response_format: text | json_object | json_schema (+ llama-server's json_object.schema)."""
    if rf is None:
        return None
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise InputError('response_format must be an object with a "type"')
    kind = rf["type"]
    extra = set(rf) - {"type", "json_schema", "schema"}
    if extra:
        raise InputError(f"response_format: unknown field(s) {sorted(extra)}")
    if kind == "text":
        return None
    if kind == "json_object":
        return from_json_schema(rf.get("schema") or JSON_OBJECT_SCHEMA, "json_object")
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or "schema" not in js and "name" not in js:
            raise InputError('response_format: "json_schema" must be an object with "name" and "schema"')
        unknown = set(js) - {"name", "schema", "strict", "description"}
        if unknown:
            raise InputError(f"response_format.json_schema: unknown field(s) {sorted(unknown)}")
        return from_json_schema(js.get("schema") or {}, "json_schema")
    raise InputError(f"response_format: type {kind!r} is not one of text, json_object, json_schema")


def resolve(grammar=None, json_schema=None, response_format=None) -> Grammar | None:
    """At most one of the three ways to constrain the answer."""
    given = [n for n, v in (("grammar", grammar), ("json_schema", json_schema),
                            ("response_format", response_format)) if v is not None]
    if len(given) > 1:
        raise InputError(f"give only one of {', '.join(given)}")
    if grammar is not None:
        return grammar if isinstance(grammar, Grammar) else from_gbnf(grammar)
    if json_schema is not None:
        return from_json_schema(json_schema)
    return from_response_format(response_format)
