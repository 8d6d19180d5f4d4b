"""The flow document, version 1, as pydantic models.

These models are the single source of truth for the shape of a flow: the
validation pipeline checks documents against them and ``schema.json`` is
generated from them, so every field carries a description for editors.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

STEP_ID = r"^[a-z][a-z0-9_]{0,63}$"
FLOW_NAME = r"^[a-z0-9][a-z0-9-]{0,63}$"
PERSONA_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
BAND_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
DURATION = r"^[0-9]{1,9}[smhd]$"
CALL = (
    r"^([A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
    r"|[A-Za-z0-9][A-Za-z0-9_.-]{0,127})$"
)

StepId = Annotated[str, Field(pattern=STEP_ID, description="A step id (a Jinja identifier).")]
PersonaName = Annotated[
    str, Field(pattern=PERSONA_NAME, description="A persona: the file personas/<name>.md.")
]
Name = Annotated[str, Field(pattern=NAME)]
BandName = Annotated[str, Field(pattern=BAND_NAME, description="A band name.")]
Duration = Annotated[
    str,
    Field(
        pattern=DURATION,
        description="A duration: an integer and a unit, one of s, m, h, d (e.g. 90s, 15m, 24h).",
    ),
]
ValueType = Literal["string", "integer", "number", "boolean", "array", "object"]

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> int:
    """The number of seconds in a duration such as ``15m``."""
    match = re.fullmatch(DURATION, duration)
    if match is None:
        raise ValueError(f"not a duration: {duration!r}")
    return int(duration[:-1]) * _UNIT_SECONDS[duration[-1]]


class Document(BaseModel):
    """Every part of a flow: strict types, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


def type_error(value_type: str, items: str | None, value: Any) -> str | None:
    """Why ``value`` is not of ``value_type`` (with ``items`` for arrays), or None if it is."""
    checks: dict[str, Any] = {
        "string": lambda v: isinstance(v, str) and _unicode(v),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: (
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    if not checks[value_type](value):
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected a finite {value_type}, got {value}"
        if value_type == "string" and isinstance(value, str):
            return "not valid Unicode (a lone surrogate)"
        return f"expected {value_type}, got {json_type(value)}"
    if value_type == "array" and items is not None:
        for index, item in enumerate(value):
            if not checks[items](item):
                return f"item {index}: expected {items}, got {json_type(item)}"
    return None


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_type(value: Any) -> str:
    """The JSON type name of a plain value."""
    if value is None:
        return "null"
    for python, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
        (str, "string"),
        (list, "array"),
        (dict, "object"),
    ):
        if isinstance(value, python):
            return name
    return type(value).__name__


class InputSpec(Document):
    """A typed value a launch passes in (for `inputs`) or a decision carries (for `form`)."""

    type: ValueType = Field(description="The value's JSON type.")
    items: ValueType | None = Field(default=None, description="For arrays: the type of every item.")
    default: Any = Field(
        default=None, description="The value used when none is given; without it, required."
    )
    description: str | None = Field(default=None, description="What the value is for.")
    enum: list[Any] | None = Field(
        default=None, min_length=1, description="The only values allowed."
    )

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if self.items is not None and self.type != "array":
            raise ValueError("items: applies only to type array")
        for value in self.enum or []:
            if (problem := type_error(self.type, self.items, value)) is not None:
                raise ValueError(f"enum: value {value!r}: {problem}")
        if not self.required:
            if (problem := type_error(self.type, self.items, self.default)) is not None:
                raise ValueError(f"default: {problem}")
            if self.enum is not None and self.default not in self.enum:
                raise ValueError(f"default: {self.default!r} is not one of the enum values")
        return self


class OutputSpec(Document):
    """How an agent's output is parsed."""

    type: Literal["text", "json"] = Field(description="text (default) or json.")
    json_schema: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="For json: a JSON Schema the parsed output must satisfy.",
    )

    @model_validator(mode="after")
    def _schema_for_json(self) -> OutputSpec:
        if self.json_schema is not None and self.type != "json":
            raise ValueError("schema: applies only to type json")
        return self


class StepBase(Document):
    id: StepId = Field(description="The step id, unique in the flow (a Jinja identifier).")
    needs: list[StepId] = Field(
        default_factory=list, description="Steps that must settle before this one starts."
    )
    when: str | bool | None = Field(
        default=None,
        description="A Jinja expression, without braces; when false the step is skipped.",
    )
    bands: list[BandName] | None = Field(
        default=None, description="The bands this step runs in; excluded from the others."
    )
    title: str | None = Field(default=None, description="A human title shown in progress views.")
    timeout: Duration | None = Field(default=None, description="How long one attempt may take.")

    @model_validator(mode="after")
    def _needs_once(self) -> StepBase:
        if len(set(self.needs)) == len(self.needs):
            return self
        counts = Counter(self.needs)
        repeated = sorted(need for need, count in counts.items() if count > 1)
        if repeated:
            raise ValueError(f"needs: {', '.join(map(repr, repeated))} listed more than once")
        return self


class RetryingStep(StepBase):
    retries: int | None = Field(
        default=None, ge=0, le=100, description="Attempts after the first one fails."
    )
    retry_delay: Duration | None = Field(
        default=None, description="Wait before the first retry; doubles each attempt."
    )


class AgentStep(RetryingStep):
    """A read-only agent answering a prompt composed of persona, prompt and contracts."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["prompt"]}, {"required": ["prompt_file"]}]}
    )

    kind: Literal["agent"] = Field(description="agent: ask a read-only agent.")
    persona: PersonaName | None = Field(
        default=None, description="The persona: personas/<name>.md is put before the prompt."
    )
    prompt: str | None = Field(default=None, description="The prompt, a Jinja template.")
    prompt_file: str | None = Field(
        default=None, description="A file holding the prompt template, relative to the flow."
    )
    contracts: list[Name] | None = Field(
        default=None, description="Named contracts appended to the prompt."
    )
    fields: list[Name] = Field(
        default_factory=list,
        description="Names parsed from `name: value` lines of the output; each is required.",
    )
    output: Literal["text", "json"] | OutputSpec = Field(
        default="text", description="text (default), json, or {type: json, schema: {...}}."
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> AgentStep:
        if (self.prompt is None) == (self.prompt_file is None):
            raise ValueError("an agent step needs exactly one of 'prompt' or 'prompt_file'")
        return self


class CodeStep(RetryingStep):
    """A Python function called with `ctx` and the rendered `with` values."""

    kind: Literal["code"] = Field(description="code: call a Python function.")
    call: str = Field(
        pattern=CALL,
        description="module:function under a code root, or an entry point name "
        "in the group flowrunner.code_steps.",
    )
    with_: dict[Name, Any] = Field(
        default_factory=dict,
        alias="with",
        description="Keyword arguments of the function; strings are Jinja templates.",
    )


class ApprovalStep(StepBase):
    """A gate: the run waits here until someone approves or rejects."""

    kind: Literal["approval"] = Field(description="approval: wait for a human decision.")
    message: str | None = Field(default=None, description="What the approver reads (template).")
    approvers: list[str] | None = Field(
        default=None, description="Identities allowed to decide; anyone when absent."
    )
    form: dict[Name, InputSpec] = Field(
        default_factory=dict, description="The typed payload a decision carries."
    )
    on_timeout: Literal["reject", "approve"] = Field(
        default="reject", description="The decision taken when the timeout passes."
    )
    on_reject: Literal["fail", "continue"] = Field(
        default="fail",
        description="fail: the run fails; continue: the rejection becomes data for `when` guards.",
    )
    prevent_self_approval: bool = Field(
        default=False, description="When true, whoever launched the run may not decide."
    )


Step = Annotated[AgentStep | CodeStep | ApprovalStep, Field(discriminator="kind")]


class Defaults(Document):
    """Values applied to every step whose kind has the key and that does not set it."""

    persona: PersonaName | None = Field(default=None, description="Default persona.")
    contracts: list[Name] | None = Field(default=None, description="Default contracts.")
    timeout: Duration | None = Field(default=None, description="Default timeout.")
    retries: int | None = Field(default=None, ge=0, le=100, description="Default retries.")
    retry_delay: Duration | None = Field(default=None, description="Default retry delay.")


class Flow(Document):
    """A flow: a DAG of agent, code and approval steps."""

    model_config = ConfigDict(title="flowrunner flow, version 1")

    version: Literal[1] = Field(description="The format version: 1.")
    name: str = Field(pattern=FLOW_NAME, description="The flow's name, unique among flows.")
    description: str | None = Field(default=None, description="What the flow does.")
    inputs: dict[Name, InputSpec] = Field(
        default_factory=dict, description="What a launch must or may pass."
    )
    bands: list[BandName] | None = Field(
        default=None,
        min_length=1,
        description="Named depths of a run; the first is the default band.",
    )
    defaults: Defaults = Field(default_factory=Defaults, description="Defaults for steps.")
    contracts: dict[Name, str] = Field(
        default_factory=dict, description="Named text blocks appended to agent prompts."
    )
    max_parallel: int | None = Field(
        default=None, ge=1, description="Cap on agent steps running at once in one run."
    )
    steps: list[Step] = Field(min_length=1, description="The steps, in any order.")
    report: str | None = Field(
        default=None, description="Rendered when every step has settled (template)."
    )

    def with_defaults(self) -> Flow:
        """This flow with `defaults` applied to every step that does not set the key."""
        given = self.defaults.model_dump(exclude_none=True)
        steps = []
        for step in self.steps:
            update = {
                key: value
                for key, value in given.items()
                if key in type(step).model_fields and key not in step.model_fields_set
            }
            steps.append(step.model_copy(update=update) if update else step)
        return self.model_copy(update={"steps": steps})
