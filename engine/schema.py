"""``schema.json``: the JSON Schema of a flow document, generated from the pydantic models."""

from __future__ import annotations

import json
from typing import Any

from engine.model.documents import Flow

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _discriminate(node: Any) -> Any:
    """Rewrite pydantic's ``oneOf`` + ``discriminator`` as ``if``/``then`` on the tag.

    ``discriminator`` is an OpenAPI keyword that most JSON Schema validators
    ignore, so a bad step would fail every branch of ``oneOf`` at once. With
    ``if``/``then`` an editor reports one clear error: an unknown ``kind``, or
    the problem inside the step of the kind it names.
    """
    if isinstance(node, list):
        return [_discriminate(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _discriminate(value) for key, value in node.items()}
    discriminator = node.get("discriminator")
    if not (isinstance(discriminator, dict) and "oneOf" in node):
        return node
    tag = discriminator["propertyName"]
    mapping: dict[str, str] = discriminator["mapping"]
    return {
        "type": "object",
        "required": [tag],
        "properties": {tag: {"enum": list(mapping), "description": "The kind of step."}},
        "allOf": [
            {
                "if": {"properties": {tag: {"const": value, "description": f"A {value} step."}}},
                "then": {"$ref": ref},
            }
            for value, ref in mapping.items()
        ],
    }


def flow_schema() -> dict[str, Any]:
    """The JSON Schema editors use to complete and check flow files."""
    schema = _discriminate(Flow.model_json_schema(by_alias=True, mode="validation"))
    schema["description"] = "A flowrunner flow (format version 1). See docs/flow-format.md."
    return {"$schema": DIALECT, **schema}


def render() -> str:
    """The exact text of schema.json."""
    return json.dumps(flow_schema(), indent=2, ensure_ascii=False) + "\n"
