"""OpenAI Chat Completions shapes (the subset we serve), as pydantic models.

They drive request validation and `/openapi.json`. Field names and nesting follow
OpenAI's API reference (openai-python's `types/chat/*`); llama-server's and vLLM's
extras we accept are marked "extension". A field we do not implement is refused
(400 naming it), never ignored: the OpenAI SDK sends only the fields a caller sets.
The one accepted field without effect on the answer is `user` (an end-user id for
the caller's own records). docs/api-fields.md lists every field beside llama-server's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- request -------------------------------------------------------------------
class ImageURL(_Req):
    url: str = Field(description="data:<mime>;base64,... always; http(s) with --allow-remote-media; "
                                 "a path or file:// inside --media-dir")
    detail: Optional[Literal["auto", "high"]] = Field(
        None, description="both mean the model's own slicing; \"low\" (one downscaled view) is not implemented")


class TextPart(_Req):
    type: Literal["text"]
    text: str


class ImagePart(_Req):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(_Req):
    url: str = Field(description="data:video/<type>;base64,... always; http(s) with --allow-remote-media; "
                                 "a path or file:// inside --media-dir")


class VideoPart(_Req):
    """A video, read with the model's own recipe (4.5: 3D-resampler packing; 4.6/4.7: stacked
    frames); the options are extensions (docs/video.md), each left out takes the model's value."""

    type: Literal["video_url"]
    video_url: VideoURL
    fps: Optional[float] = Field(None, description="extension: frames per second to sample (4.5: choose_fps; "
                                                   "4.6/4.7/OCR: whole samples per second)")
    max_frames: Optional[int] = Field(None, description="extension: the model card's MAX_NUM_FRAMES "
                                                        "(4.5: packed groups; 4.6: main frames)")
    packing: Optional[int] = Field(None, description="extension, 4.5: frames per 3D-resampler group (1-6)")
    max_packing: Optional[int] = Field(None, description="extension, 4.5: MAX_NUM_PACKING (1-6)")
    stack_frames: Optional[int] = Field(None, description="extension, 4.6/4.7/OCR: samples per second, "
                                                          "sub-frames stacked into one picture")
    mode: Optional[Literal["auto", "images"]] = Field(None, description="extension: \"images\" feeds every "
                                                                        "sampled frame as a separate image")


ContentPart = Annotated[Union[TextPart, ImagePart, VideoPart], Field(discriminator="type")]


class SystemMessage(_Req):
    role: Literal["system", "developer"]
    content: Union[str, list[TextPart]]


class UserMessage(_Req):
    role: Literal["user"]
    content: Union[str, list[ContentPart]]


class FunctionCallIn(_Req):
    name: str
    arguments: str = Field(description="a JSON object, as text")


class ToolCallIn(_Req):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class AssistantMessage(_Req):
    role: Literal["assistant"]
    content: Union[str, list[TextPart], None] = None
    reasoning_content: Optional[str] = Field(None, description="extension: an earlier thought, handed to the chat "
                                                               "template (which decides whether history keeps it)")
    tool_calls: Optional[list[ToolCallIn]] = None


class ToolMessage(_Req):
    role: Literal["tool"]
    content: Union[str, list[TextPart]]
    tool_call_id: str


Message = Annotated[Union[SystemMessage, UserMessage, AssistantMessage, ToolMessage], Field(discriminator="role")]


class FunctionDef(_Req):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = Field(None, description="a JSON schema of the arguments object")
    strict: Optional[bool] = Field(None, description="calls always follow the schema when a grammar applies "
                                                     "(tool_choice required or named)")


class Tool(_Req):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Req):
    name: str


class NamedToolChoice(_Req):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormatText(_Req):
    type: Literal["text"]


class ResponseFormatJsonObject(_Req):
    type: Literal["json_object"]
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema", description="extension (llama-server)")


class JsonSchemaSpec(_Req):
    name: str
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[bool] = Field(None, description="the answer always follows the schema (a grammar enforces "
                                                     "it), strict or not")


class ResponseFormatJsonSchema(_Req):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[Union[ResponseFormatText, ResponseFormatJsonObject, ResponseFormatJsonSchema],
                           Field(discriminator="type")]


class StreamOptions(_Req):
    include_usage: bool = False


class ChatCompletionRequest(_Req):
    model: str = Field(description="any name: the server serves one model (GET /v1/models names it)")
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    top_k: Optional[int] = Field(None, ge=0, description="extension (llama-server, vLLM); 0 = off")
    min_p: Optional[float] = Field(None, ge=0, le=1, description="extension (llama-server, vLLM)")
    typical_p: Optional[float] = Field(None, gt=0, le=1, description="extension (llama-server)")
    repeat_penalty: Optional[float] = Field(None, gt=0, allow_inf_nan=False, description="extension (llama-server)")
    repeat_last_n: Optional[int] = Field(None, ge=-1, description="extension (llama-server); -1 = the context")
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    logit_bias: Optional[Union[dict[str, Union[float, bool]], list[list[Union[int, str, float, bool]]]]] = Field(
        None, description="{token id: bias}; extension (llama-server): text keys are tokenized, false bans, and "
                          "[[token, bias], ...] pairs")
    seed: Optional[int] = Field(None, ge=-1, le=2**32 - 2, description="-1 or absent: random")
    stop: Union[str, list[str], None] = None
    ignore_eos: Optional[bool] = Field(None, description="extension (llama-server)")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, description="choices to generate (one after another)")
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    response_format: Optional[ResponseFormat] = None
    grammar: Optional[str] = Field(None, description="extension (llama-server): a GBNF grammar for the answer")
    json_schema: Optional[dict[str, Any]] = Field(None, description="extension (llama-server): a JSON schema "
                                                                     "for the answer")
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    reasoning_format: Optional[Literal["auto", "deepseek", "none"]] = Field(
        None, description="extension (llama-server): auto/deepseek put the thought in reasoning_content, none "
                          "leaves it in content")
    thinking_budget_tokens: Optional[int] = Field(
        None, ge=-1, description="extension (llama-server; alias reasoning_budget_tokens): close the thought "
                                 "after N tokens; -1 = unlimited")
    reasoning_budget_tokens: Optional[int] = Field(None, ge=-1, description="extension: as thinking_budget_tokens")
    reasoning_budget_message: Optional[str] = Field(None, description="extension (llama-server): text put before "
                                                                      "the closing tag when the budget runs out")
    chat_template_kwargs: Optional[dict[str, Any]] = Field(
        None, description='extension (vLLM, llama-server): {"enable_thinking": true} turns thinking on')
    user: Optional[str] = Field(None, description="an end-user id for your records; no effect on the answer")
    max_slice_nums: Optional[int] = Field(None, ge=1, le=64, description="extension (MiniCPM-V processors): this "
                                          "request's slice budget per image (cards: 36 for documents, 1 for video); "
                                          "2.6/4.0/4.5 at most 9")
    max_pixels: Optional[int] = Field(None, ge=784, description="extension: downscale each image to at most this many "
                                      "pixels before slicing")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


# --- responses -----------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: Optional[list[TokenLogprob]] = Field(description="every generated token (thinking included), "
                                                              "log-softmax of llama.cpp's logits")
    refusal: None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="a JSON object, as text")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str]
    reasoning_content: Optional[str] = Field(None, description="the thinking text, when thinking is on")
    tool_calls: Optional[list[ToolCallOut]] = None


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class FunctionCallDelta(BaseModel):
    name: Optional[str] = None
    arguments: Optional[str] = None


class ToolCallDelta(BaseModel):
    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: Optional[FunctionCallDelta] = None


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[ToolCallDelta]] = Field(None, description="each call whole, in one delta")


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Optional[FinishReason] = None
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (`data: {...}`), ended by `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None


class AppliedTemplate(BaseModel):
    prompt: str = Field(description="the rendered prompt, images as mtmd's media marker")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "minicpmv-edge"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    detail: Optional[str] = Field(None, description="what is wrong, with status error")
