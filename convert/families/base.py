"""What every family module provides, and the runtime facts it writes.

A family is one MiniCPM-V version: how to recognise its config.json, how its
tensors map onto llama.cpp's text model and projector, and the per-version
facts (minicpmv_edge/model_facts.py, with the checkpoint's own slice settings)
that the runtimes read back from the text GGUF's `minicpmv_edge.*` keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from gguf import GGUFWriter

from minicpmv_edge.model_facts import ModelFacts

from ..safetensors_reader import Checkpoint
from ..writer import PlannedTensor


# Per-version runtime facts live in minicpmv_edge/model_facts.py (shared with the runtime,
# which needs them for GGUFs written by other tools); family modules fill in the
# checkpoint's own values and the pipeline writes them as minicpmv_edge.* keys.
RuntimeFacts = ModelFacts


@dataclass
class ConversionPlan:
    """Everything the pipeline needs to write the two files, nothing read yet."""

    text_arch: str
    text_tensors: list[PlannedTensor]
    add_text_metadata: Callable[[GGUFWriter], None]  # hparams + tokenizer (not our keys)
    mmproj_tensors: list[PlannedTensor]
    add_mmproj_metadata: Callable[[GGUFWriter], None]
    projector_type: str
    projector_version: int  # clip.minicpmv_version, 0 when the projector has none
    facts: RuntimeFacts
    consumed: set[str] = field(default_factory=set)  # source tensors used or deliberately skipped


class Family:
    """Base for family modules; subclasses set the class attributes and `plan`."""

    name: ClassVar[str]  # "minicpmv-4.5"
    model_version: ClassVar[str]  # "4.5"
    example: ClassVar[str]  # a Hugging Face repo id of this layout, for messages and docs

    @classmethod
    def matches(cls, config: dict, src: Path) -> bool:
        raise NotImplementedError

    def plan(self, src: Path, ckpt: Checkpoint, config: dict, outtype) -> ConversionPlan:
        raise NotImplementedError
