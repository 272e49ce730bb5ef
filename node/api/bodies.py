"""Reading request input: JSON bodies into pydantic models and path parameters, with errors that say
which field is wrong."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from node.core.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """Base of request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


async def read_json(request: web.Request) -> Any:
    """The request's JSON document; InvalidInput for an empty or malformed body."""
    raw = await request.read()  # aiohttp enforces the app's body limit here (413)
    if not raw.strip():
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the request body is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


async def read_body(request: web.Request, model: type[M]) -> M:
    """The request's JSON body validated into `model`."""
    data = await read_json(request)
    if not isinstance(data, dict):
        raise InvalidInput(f"expected a JSON object, got {type(data).__name__ if data is not None else 'null'}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """'field: problem; other: problem' from a pydantic error."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def int_param(request: web.Request, name: str) -> int:
    """A path parameter that must be a positive integer; 400 otherwise."""
    text = request.match_info[name]
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput(f"{name} must be a positive integer, got {text!r}")
    return int(text)
