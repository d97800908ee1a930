"""Render a model's own chat template (tokenizer.chat_template) the way transformers does.

The prompt's truth is the template stored verbatim in the GGUF. transformers renders
templates with `apply_chat_template`; we need the same bytes without depending on
transformers at run time (it is a test-only reference: hundreds of MB and torch), so
this module builds the same jinja2 environment from its documented behaviour
(transformers/utils/chat_template_utils.py, read for facts, not copied):

* `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
  `loopcontrols` extension (templates from the Hub are untrusted code);
* `tojson` is plain `json.dumps(x, ensure_ascii=False)` (jinja's own filter escapes
  `<`, `>`, `&`, `'` and sorts keys, which would change tool schemas in the prompt);
* globals `raise_exception(msg)`, `strftime_now(fmt)`, a `namespace` that refuses
  underscore attributes, and `dict`;
* render variables: `messages`, `tools`, `documents`, `add_generation_prompt`, the
  tokenizer's special tokens (`bos_token`, `eos_token`, ...) and any extra keyword
  (`enable_thinking`, ...), extra keywords overriding special tokens;
* messages: keys whose value is None are dropped (OpenAI clients send
  `content: null`), and a message's reasoning given as `reasoning_content`,
  `thinking` or `reasoning` is visible under `reasoning_content` and `thinking`.

`enable_thinking=None` leaves the variable undefined, so the template's own default
applies (MiniCPM-V 4.5: no thinking switch at all; 4.6: off).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

from .errors import InputError

_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Namespace(jinja2.utils.Namespace):
        """jinja's namespace, but no attribute may start with "_" (a sandbox escape route)."""

        def __init__(*args, **kwargs):
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")

    class DictFactory:
        """`dict(...)` and `dict.fromkeys(...)` inside templates, nothing else of the type."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=Namespace,
                       dict=DictFactory())
    return env


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    """What transformers hands the template: None-valued keys dropped, reasoning aliased."""
    out = []
    for n, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InputError(f"message {n} must be a dict, got {type(m).__name__}")
        msg = {k: v for k, v in m.items() if v is not None}
        reasoning = next((msg[k] for k in _REASONING_KEYS if msg.get(k) is not None), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        out.append(msg)
    return out


class ChatTemplate:
    """One compiled chat template plus the tokenizer's special tokens it may reference."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None):
        import jinja2

        if not isinstance(source, str) or not source.strip():
            raise InputError("the chat template is empty")
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = _environment().from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise InputError(f"the chat template does not parse (line {exc.lineno}: {exc.message})") from None

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None, documents=None,
               enable_thinking: bool | None = None, **kwargs: Any) -> str:
        import jinja2

        if enable_thinking is not None:
            kwargs["enable_thinking"] = bool(enable_thinking)
        variables = {**self.special_tokens, **kwargs}
        try:
            return self._template.render(messages=normalize_messages(messages), tools=tools, documents=documents,
                                         add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.exceptions.SecurityError as exc:
            raise InputError(f"the chat template tried something the sandbox forbids: {exc}") from None
        except jinja2.exceptions.TemplateError as exc:
            # raise_exception(...) from the template: the conversation breaks one of its rules
            raise InputError(f"the chat template refused this conversation: {exc}") from None
