"""``schema.json``: the JSON Schema of a flow document, generated from the pydantic models."""

from __future__ import annotations

import json
from typing import Any

from engine.model.documents import Flow

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def flow_schema() -> dict[str, Any]:
    """The JSON Schema editors use to complete and check flow files."""
    schema = Flow.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": DIALECT,
        "description": "A flowrunner flow (format version 1). See docs/flow-format.md.",
        **schema,
    }


def render() -> str:
    """The exact text of schema.json."""
    return json.dumps(flow_schema(), indent=2, ensure_ascii=False) + "\n"
