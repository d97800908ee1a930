"""MiniCPMV.chat's arguments -> what one generation needs: the prompt, its images, the sampling and
output options (generate.GenerateOptions), and the thinking state the rendered prompt leaves.

Everything is checked here, before any llama.cpp work: sampling values, a grammar llama.cpp can
parse, token ids in the vocabulary, tools the model's chat template knows.
"""

from __future__ import annotations

from dataclasses import replace

from minicpmv_edge.errors import InputError
from minicpmv_edge.gguf_info import read_info

from .generate import GenerateOptions
from .grammar import resolve as resolve_grammar
from .tools import OPEN, plan


def prepare(m, messages, a: dict):
    """(prompt, bitmaps, GenerateOptions, in_think, tail) for MiniCPMV `m`; `a`: chat()'s keyword arguments."""
    given = {k: a[k] for k in ("max_tokens", "temperature", "top_k", "top_p", "min_p", "typical_p",
                               "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty", "seed")
             if a[k] is not None}
    if a["stop"] is not None:
        given["stop"] = (a["stop"],) if isinstance(a["stop"], str) else tuple(a["stop"])
    if a["logit_bias"]:
        given["logit_bias"] = token_biases(m.model, a["logit_bias"])
    sampling = replace(m.sampling_defaults, ignore_eos=bool(a["ignore_eos"]), **given).validated()
    user_grammar = resolve_grammar(a["grammar"], a["json_schema"], a["response_format"])
    tp = tool_plan(m, a["tools"], a["tool_choice"], a["parallel_tool_calls"], constrained=user_grammar is not None)
    if tp.ban_open:
        sampling = _ban_tool_calls(m.model, sampling)
    opts = GenerateOptions(sampling=sampling, reasoning_format=a["reasoning_format"],
                           thinking_budget=a["thinking_budget"], budget_message=a["thinking_budget_message"],
                           grammar=user_grammar or tp.grammar, logprobs=bool(a["logprobs"]),
                           top_logprobs=a["top_logprobs"], tools=tuple(tp.tools) if tp.fmt else (),
                           tool_format=tp.fmt).validated()
    if user_grammar is not None:
        user_grammar.check(m.model)
    budget = m._budget(a["max_slice_nums"], a["max_pixels"])  # this request's images (image_budget.py)
    turns = m._turns(messages)
    kwargs = template_kwargs(m, a["chat_template_kwargs"])
    thinking = kwargs.pop("enable_thinking", a["enable_thinking"])
    turns = m.expand_videos(turns, thinking, reserve=sampling.max_tokens)
    rendered, bitmaps = m.render(turns, thinking, tp.tools or None, budget=budget, **kwargs)
    # the rendered prompt says whether the model starts inside <think> and which end of it the
    # next turn's history drops (session.py snapshots recurrent state before that tail)
    return rendered.text, bitmaps, opts, rendered.in_think, rendered.tail


# what the request itself sets when the template is rendered
_RESERVED = ("messages", "tools", "documents", "add_generation_prompt")


def template_kwargs(m, kwargs) -> dict:
    """chat_template_kwargs, checked: each key must be a variable the model's chat template reads
    (jinja's own analysis of the template), so that none is accepted and silently changes nothing."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise InputError("chat_template_kwargs must be a mapping of variable names to values")
    if not hasattr(m, "_template_variables"):
        import jinja2
        import jinja2.ext
        import jinja2.meta

        source = m.format.template.source
        ast = jinja2.Environment(extensions=[jinja2.ext.loopcontrols]).parse(source)
        m._template_variables = frozenset(jinja2.meta.find_undeclared_variables(ast))
    for key in kwargs:
        if key in _RESERVED:
            raise InputError(f"chat_template_kwargs: {key!r} is set by the request itself")
        if key != "enable_thinking" and key not in m._template_variables:
            raise InputError(f"chat_template_kwargs: the model's chat template does not use {key!r}")
    return dict(kwargs)


def tool_plan(m, tools, tool_choice, parallel_tool_calls: bool | None, constrained: bool):
    """tools.plan for this model's chat template, with its grammar compiled."""
    if not hasattr(m, "_template_source"):
        m._template_source = read_info(m.model.path).get("tokenizer.chat_template")
    p = plan(m._template_source, tools, tool_choice, parallel_tool_calls, constrained)
    if p.grammar is not None:
        p.grammar.check(m.model)
    return p


def _ban_tool_calls(model, sampling):
    """tool_choice none: the opening tag of a call gets -inf (a stop string when it is not one token)."""
    ids = model.tokenize(OPEN)
    if len(ids) == 1:
        return replace(sampling, logit_bias=sampling.logit_bias + ((ids[0], float("-inf")),))
    return replace(sampling, stop=sampling.stop + (OPEN,))


def token_biases(model, bias) -> tuple[tuple[int, float], ...]:
    """{token id | text: bias} or [[token id | text, bias], ...]; text is tokenized (as llama-server);
    False bans a token (-inf)."""
    items = bias.items() if isinstance(bias, dict) else bias
    out = []
    try:
        pairs = [(k, v) for k, v in items]
    except (TypeError, ValueError):
        raise InputError("logit_bias must be a mapping {token: bias} or a list of [token, bias] pairs") from None
    for key, value in pairs:
        if value is False:
            value = float("-inf")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"logit_bias: the bias of {key!r} must be a number or false, got {value!r}")
        if isinstance(key, str) and key.lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < model.n_vocab:
                raise InputError(f"logit_bias: token {key} is outside the vocabulary (0..{model.n_vocab - 1})")
            out.append((key, float(value)))
        elif isinstance(key, str) and key:
            out += [(t, float(value)) for t in model.tokenize(key, parse_special=False)]
        else:
            raise InputError(f"logit_bias: {key!r} is neither a token id nor text")
    return tuple(out)
