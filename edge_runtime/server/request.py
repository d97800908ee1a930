"""A validated chat-completion request -> MiniCPMV.chat keyword arguments, and results -> OpenAI JSON.

Every request field maps to one chat() argument here (docs/api-fields.md has the table);
checks that need the model (thinking support, a grammar llama.cpp can parse, token ids in
the vocabulary) raise errors the app turns into 400s naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from minicpmv_edge.errors import InputError

from ..grammar import resolve as resolve_grammar


class FieldError(InputError):
    """Bad input in one request field; `param` names it."""

    def __init__(self, param: str, problem: str):
        problem = problem.removeprefix(f"{param}: ")
        super().__init__(f"{param}: {problem}")
        self.param = param


@dataclass
class Plan:
    kwargs: dict  # MiniCPMV.chat keyword arguments
    n: int  # choices, generated one after another
    thinking: bool
    logprobs: bool


# request field -> chat() argument, for the fields that pass through unchanged when given
_DIRECT = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
           "typical_p": "typical_p", "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
           "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
           "ignore_eos": "ignore_eos", "reasoning_format": "reasoning_format",
           "reasoning_budget_message": "thinking_budget_message"}


def plan(body, model, config) -> Plan:
    """Runs off the event loop (it may compile a grammar)."""
    kw: dict = {}
    if body.stream_options is not None and not body.stream:  # as OpenAI: it would change nothing
        raise FieldError("stream_options", "only allowed with stream: true")
    for field, arg in _DIRECT.items():
        value = getattr(body, field)
        if value is not None:
            kw[arg] = value
    template_kwargs = dict(body.chat_template_kwargs or {})
    thinking = template_kwargs.pop("enable_thinking", False)
    if not isinstance(thinking, bool):
        raise FieldError("chat_template_kwargs.enable_thinking", "must be true or false")
    if thinking and not model.format.thinking_supported:
        raise FieldError("chat_template_kwargs", f"{model.format.family} has no thinking mode")
    kw["enable_thinking"] = thinking
    if template_kwargs:  # every other key reaches the model's chat template as a variable (as transformers')
        try:
            kw["chat_template_kwargs"] = model.check_template_kwargs(template_kwargs)
        except InputError as exc:
            raise FieldError("chat_template_kwargs", str(exc)) from None
    max_tokens = body.max_completion_tokens or body.max_tokens or min(config.default_max_tokens,
                                                                      config.max_tokens_limit)
    if max_tokens > config.max_tokens_limit:
        raise FieldError("max_tokens", f"{max_tokens} is over this server's limit of {config.max_tokens_limit}")
    kw["max_tokens"] = max_tokens
    kw["stop"] = body.stop_list()
    if body.seed is not None:
        kw["seed"] = body.seed
    budget = body.thinking_budget_tokens if body.thinking_budget_tokens is not None else body.reasoning_budget_tokens
    if budget is not None:
        kw["thinking_budget"] = budget
    if body.logit_bias:
        try:
            kw["logit_bias"] = model.token_biases(body.logit_bias)
        except InputError as exc:
            raise FieldError("logit_bias", str(exc)) from None
    if body.top_logprobs and not body.logprobs:
        raise FieldError("top_logprobs", "needs logprobs: true")
    if body.logprobs:
        kw["logprobs"], kw["top_logprobs"] = True, body.top_logprobs or 0
    if body.n > config.max_n:
        raise FieldError("n", f"{body.n} is over this server's limit of {config.max_n}")
    rf = body.response_format.model_dump(by_alias=True, exclude_none=True) if body.response_format else None
    for field, value in (("grammar", body.grammar), ("json_schema", body.json_schema), ("response_format", rf)):
        try:
            grammar = resolve_grammar(**{field: value}) if value is not None else None
            if grammar is not None:
                grammar.check(model.model)
                kw[field] = value
        except InputError as exc:
            raise FieldError(field, str(exc)) from None
    if sum(f in kw for f in ("grammar", "json_schema", "response_format")) > 1:
        raise FieldError("response_format", "give only one of response_format, grammar, json_schema")
    if body.tools is not None:
        kw["tools"] = [t.model_dump(exclude_none=True) for t in body.tools]
    if body.tool_choice is not None:
        kw["tool_choice"] = body.tool_choice if isinstance(body.tool_choice, str) else body.tool_choice.model_dump()
    if body.parallel_tool_calls is not None:
        kw["parallel_tool_calls"] = body.parallel_tool_calls
    if any(f in kw for f in ("tools", "tool_choice", "parallel_tool_calls")):
        try:  # the model's template must know tools; the tool_choice grammar must compile
            model.tool_plan(kw.get("tools"), kw.get("tool_choice"), kw.get("parallel_tool_calls"),
                            constrained=any(f in kw for f in ("grammar", "json_schema", "response_format")))
        except InputError as exc:
            field = next((f for f in ("tool_choice", "parallel_tool_calls") if str(exc).startswith(f)), "tools")
            raise FieldError(field, str(exc)) from None
    for field in ("max_slice_nums", "max_pixels"):  # the image budget (image_budget.py), checked per model
        value = getattr(body, field)
        if value is not None:
            try:
                model._budget(**{"max_slice_nums": None, "max_pixels": None, field: value})
            except InputError as exc:
                raise FieldError(field, str(exc)) from None
            kw[field] = value
    return Plan(kw, body.n, thinking, bool(body.logprobs))


def prompt_text(model, turns, p: Plan) -> str:
    """The prompt chat() would evaluate for this plan (for /apply-template)."""
    return model.prompt_for(turns, **p.kwargs)


def message(result, thinking: bool, logprobs: bool) -> tuple[dict, dict | None]:
    """A ChatResult -> (OpenAI message, choice logprobs)."""
    msg = {"role": "assistant", "content": result.text}
    if result.tool_calls:
        msg["tool_calls"] = [c.as_openai() for c in result.tool_calls]
        msg["content"] = result.text or None  # OpenAI: no content beside calls is null
    if thinking:
        msg["reasoning_content"] = result.reasoning
    lp = {"content": [e.as_openai() for e in result.logprobs], "refusal": None} if logprobs else None
    return msg, lp


def finish_reason(reason: str) -> str:
    return reason if reason in ("stop", "tool_calls") else "length"


def piece_logprobs(piece) -> dict | None:
    return {"content": [e.as_openai() for e in piece.logprobs], "refusal": None} if piece.logprobs else None
