"""The model-directory manifest: the one schema that exporters write and the runtime reads.

A model directory holds ``manifest.json``, ``full.onnx`` and (for kinds that can stream) ``step.onnx``.
The runtime treats every model generically from this file: it has no code per neuron kind.

Graph contracts (names are fixed here so both sides agree):

``full.onnx``
    inputs:  ``x``            float32 [N, T, *input_shape]   (batch first; input_shape is the per-step shape)
    outputs: ``logits``       float32 [N, C]      (mean over time of the per-step logits)
             ``step_logits``  float32 [N, T, C]

``step.onnx``
    inputs:  ``x``            float32 [N, *input_shape]
             one input per entry of ``states`` (``StateSpec.input``), shape [N, *StateSpec.shape]
    outputs: ``logits``       float32 [N, C]      (this step's logits)
             one output per entry of ``states`` (``StateSpec.output``), same shape as its input
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, computed_field, model_validator

MANIFEST_FILE = "manifest.json"
FULL_GRAPH = "full.onnx"
STEP_GRAPH = "step.onnx"
SCHEMA_VERSION = 2  # 2: input_shape (any per-step shape); 1: features (F), still read

INPUT_NAME = "x"
LOGITS_NAME = "logits"
STEP_LOGITS_NAME = "step_logits"


class NeuronKind(StrEnum):
    """The neuron kinds (the one definition: psn/ trains them, exporters/ writes them here)."""

    PSN = "psn"
    MASKED_PSN = "masked_psn"
    SLIDING_PSN = "sliding_psn"
    LIF = "lif"
    IF = "if"  # integrate-and-fire (SpikingJelly's IFNode, NIR's IF): exported, not trained by psn train
    CUBA_LIF = "cuba_lif"  # current-based LIF, two states (snnTorch's Synaptic, NIR's CubaLIF): exported
    LI = "li"  # leaky integrator without spikes (NIR's LI, and its I: no leak): exported
    CUBA_LI = "cuba_li"  # current-based leaky integrator without spikes (NIR's CubaLI): exported

    @property
    def facts(self) -> KindFacts:
        return KIND_FACTS[self]


class KindFacts(NamedTuple):
    """What a kind implies for training and export (data for psn/ and exporters/; the runtime reads the
    manifest's own fields and never branches on the kind)."""

    order: bool  # takes an order k (masked and sliding PSN)
    streams: bool  # has a step graph: answers after every step
    variable_length: bool  # the full graph takes any 1 <= T' <= T
    bounded: bool  # a stream takes at most T steps (max_steps = T)
    trainable: bool = True  # psn train builds it (the others come from SpikingJelly, snnTorch or NIR)
    spikes: bool = True  # its output is spikes (the export checks compare them); False: a membrane


_STATE_SPACE = {"order": False, "streams": True, "variable_length": True, "bounded": False}  # LIF-like

KIND_FACTS: dict[NeuronKind, KindFacts] = {
    NeuronKind.PSN: KindFacts(order=False, streams=False, variable_length=False, bounded=False),
    NeuronKind.MASKED_PSN: KindFacts(order=True, streams=True, variable_length=False, bounded=True),
    NeuronKind.SLIDING_PSN: KindFacts(order=True, streams=True, variable_length=True, bounded=False),
    NeuronKind.LIF: KindFacts(**_STATE_SPACE),
    NeuronKind.IF: KindFacts(**_STATE_SPACE, trainable=False),
    NeuronKind.CUBA_LIF: KindFacts(**_STATE_SPACE, trainable=False),
    NeuronKind.LI: KindFacts(**_STATE_SPACE, trainable=False, spikes=False),
    NeuronKind.CUBA_LI: KindFacts(**_STATE_SPACE, trainable=False, spikes=False),
}


def network_kind(kinds: list[NeuronKind]) -> NeuronKind:
    """The least streamable of a network's neuron kinds, what ``Manifest.kind`` holds for a network that
    mixes kinds: PSN (full graph only) < masked PSN (streams at most T steps) < sliding PSN and the
    state-space kinds, LIF, IF, CubaLIF, LI, CubaLI (stream without bound); ties go to the kind that
    comes first in the network."""
    if not kinds:
        raise ValueError("a network needs at least one neuron layer")

    def rank(k: NeuronKind) -> int:
        return 0 if not k.facts.streams else 1 if k.facts.bounded else 2

    return min(kinds, key=rank)


class StateSpec(BaseModel):
    """One state tensor of the step graph, per sample (the batch axis is not part of ``shape``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field(description="name of the step graph's input for this state")
    output: str = Field(description="name of the step graph's output carrying the new state")
    shape: tuple[int, ...] = Field(description="per-sample shape, without the batch axis")
    dtype: Literal["float32", "int64"]
    init: float = Field(0.0, description="value every element starts at for a new stream")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = "1"
    kind: NeuronKind = Field(
        description="the network's least streamable neuron kind: psn < masked_psn < sliding_psn = lif = if "
        "= cuba_lif = li = cuba_li, ties to the first in the network"
    )
    neurons: list[NeuronKind] = Field(
        default_factory=list, description="the kind of every neuron layer, in network order (schema 2)"
    )
    T: int = Field(gt=0, description="trained sequence length; the longest accepted when variable_length")
    k: int | None = Field(None, gt=0, description="order of a masked or sliding PSN")
    input_shape: tuple[PositiveInt, ...] = Field(
        min_length=1,
        max_length=8,
        description="per-step input shape, without the batch and time axes: [F], [C, L], [C, H, W]",
    )
    labels: list[str] = Field(min_length=2)
    variable_length: bool = Field(description="full.onnx accepts any 1 <= T' <= T (no PSN or masked PSN)")
    streams: bool = Field(description="a step graph exists: the model answers after every step")
    max_steps: int | None = Field(
        None, gt=0, description="most steps one stream may take (masked PSN: T); None = unbounded"
    )
    states: list[StateSpec] = Field(default_factory=list)
    opset: int
    sha256: dict[str, str] = Field(description="file name -> hex sha256 of every ONNX file")
    dataset: str
    test_accuracy: float | None = Field(None, ge=0.0, le=1.0, description="None when not measured")
    parameters: int = Field(ge=0)
    command: str = Field(description="the command line that produced the checkpoint and the export")

    @model_validator(mode="before")
    @classmethod
    def _features_to_shape(cls, data: Any) -> Any:
        """Schema 1 wrote ``features: F`` (one axis); ``features`` is also written beside ``input_shape`` as
        the per-step element count. Either way ``input_shape`` is the one source."""
        if not isinstance(data, dict) or "features" not in data:
            return data
        data = dict(data)
        features = data.pop("features")
        if "input_shape" not in data:
            data["input_shape"] = [features]
        elif isinstance(data["input_shape"], list | tuple) and features != math.prod(data["input_shape"]):
            raise ValueError(f"features={features!r} is not the product of input_shape {data['input_shape']}")
        return data

    @computed_field(
        description="elements per step: the product of input_shape (a binary frame's float32 count)"
    )
    @property
    def features(self) -> int:
        return math.prod(self.input_shape)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.streams and not self.states:
            raise ValueError("a streaming model needs at least one state")
        if self.streams and STEP_GRAPH not in self.sha256:
            raise ValueError(f"a streaming model must list {STEP_GRAPH} in sha256")
        if FULL_GRAPH not in self.sha256:
            raise ValueError(f"sha256 must list {FULL_GRAPH}")
        if self.neurons and network_kind(self.neurons) is not self.kind:
            raise ValueError(f"kind {self.kind} is not the least streamable of neurons {self.neurons}")
        if self.max_steps is not None and not self.streams:
            raise ValueError("max_steps only applies to streaming models")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        return cls.model_validate_json((Path(directory) / MANIFEST_FILE).read_text())

    def dump(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path
