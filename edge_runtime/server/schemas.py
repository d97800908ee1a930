"""OpenAI Chat Completions shapes (the subset we serve), as pydantic models.

They drive request validation and `/openapi.json`. Field names and nesting follow
OpenAI's API reference (openai-python's `types/chat/*`); vLLM and llama-server's
extras we accept are marked. Unknown request fields are ignored, as OpenAI's SDK
and other clients send fields we do not use (`user`, `logit_bias`, ...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- request -------------------------------------------------------------------
class ImageURL(_Req):
    url: str = Field(description="data:<mime>;base64,... always; http(s) with --allow-remote-media; "
                                 "a path or file:// inside --media-dir")
    detail: Optional[Literal["auto", "low", "high"]] = None


class TextPart(_Req):
    type: Literal["text"]
    text: str


class ImagePart(_Req):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class SystemMessage(_Req):
    role: Literal["system", "developer"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None


class UserMessage(_Req):
    role: Literal["user"]
    content: Union[str, list[ContentPart]]
    name: Optional[str] = None


class AssistantMessage(_Req):
    role: Literal["assistant"]
    content: Union[str, list[TextPart], None] = None
    reasoning_content: Optional[str] = Field(None, description="ignored on input (as vLLM does)")
    name: Optional[str] = None


Message = Annotated[Union[SystemMessage, UserMessage, AssistantMessage], Field(discriminator="role")]


class StreamOptions(_Req):
    include_usage: bool = False


class ChatCompletionRequest(_Req):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0, description="extension (llama-server, vLLM)")
    repeat_penalty: Optional[float] = Field(None, gt=0, description="extension (llama-server)")
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    chat_template_kwargs: Optional[dict[str, Any]] = Field(
        None, description='extension (vLLM, llama-server): {"enable_thinking": true} turns thinking on')

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


# --- responses -----------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str]
    reasoning_content: Optional[str] = Field(None, description="the thinking text, when thinking is on")


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    reasoning_content: Optional[str] = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Optional[Literal["stop", "length"]] = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (`data: {...}`), ended by `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None


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
