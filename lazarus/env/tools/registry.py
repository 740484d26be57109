"""Tools: a name, a description and JSON-schema parameters (the shape of MCP and chat templates' `tools=`).

`@tool` turns a typed Python function into a `Tool`, deriving the schema from its signature and the first
paragraph of its docstring as the description. A `Toolbox` is the set of tools one episode may call; it
validates arguments against each tool's schema before the call, so a bad call becomes a `ToolError` (an
observation the model can read), never a crash. MCP servers' tools are `Tool`s too (see `mcp_client.py`).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lazarus.errors import LazarusError


class ToolError(LazarusError):
    """A tool call that could not produce a result: unknown tool, bad arguments, or the tool failed."""

    def __init__(self, message: str, kind: str = "tool_error"):
        super().__init__(message)
        self.kind = kind  # unknown_tool | bad_arguments | tool_error | malformed


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    function: Callable[..., Any]  # called with the validated arguments as keywords; returns str or JSON-able
    close: Callable[[], None] | None = field(default=None, repr=False)

    def schema(self) -> dict:
        """The OpenAI/Hermes form chat templates take in `tools=`."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def _json_type(annotation) -> dict:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) != 1:
            return {}
        schema = _json_type(options[0])
        if "type" in schema and len(options) < len(typing.get_args(annotation)):  # Optional[X]: X or null
            schema["type"] = [schema["type"], "null"]
        return schema
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(annotation))}
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return {"type": "array", **({"items": _json_type(args[0])} if args else {})}
    if origin is dict:
        return {"type": "object"}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    return {}


def tool(function: Callable | None = None, *, name: str | None = None, description: str | None = None):
    """Decorator: a `Tool` whose schema comes from `function`'s type hints (parameters without a default
    are required) and whose description is its docstring's first paragraph."""

    def wrap(fn: Callable) -> Tool:
        hints = typing.get_type_hints(fn)
        properties, required = {}, []
        for pname, param in inspect.signature(fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            properties[pname] = _json_type(hints.get(pname, Any))
            if param.default is param.empty:
                required.append(pname)
            else:
                properties[pname]["default"] = param.default
        doc = inspect.getdoc(fn) or ""
        schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
        return Tool(name or fn.__name__, description or doc.split("\n\n")[0].replace("\n", " "), schema, fn)

    return wrap(function) if function is not None else wrap


def validate_arguments(t: Tool, arguments: Any) -> None:
    """Raise `ToolError(kind="bad_arguments")` unless `arguments` fits `t.parameters`."""
    import jsonschema

    if not isinstance(arguments, dict):
        raise ToolError(f"{t.name}: arguments must be a JSON object, got {type(arguments).__name__}", "bad_arguments")
    try:
        jsonschema.validate(arguments, t.parameters)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "arguments"
        raise ToolError(f"{t.name}: {where}: {e.message}", "bad_arguments") from None
    except jsonschema.SchemaError as e:
        raise ToolError(f"{t.name}: the tool's own schema is invalid: {e.message}", "tool_error") from None


class Toolbox:
    """The tools an episode may call, by name."""

    def __init__(self, tools: list[Tool] | None = None):
        self.tools: dict[str, Tool] = {}
        for t in tools or []:
            self.add(t)

    def add(self, t: Tool) -> None:
        if t.name in self.tools:
            raise ToolError(f"two tools are named {t.name!r}", "tool_error")
        self.tools[t.name] = t

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self.tools.values()]

    def call(self, name: str, arguments: Any) -> str:
        """The tool's result as text; every failure is a `ToolError` whose `kind` says which."""
        t = self.tools.get(name)
        if t is None:
            known = ", ".join(sorted(self.tools)) or "none"
            raise ToolError(f"unknown tool {name!r} (tools: {known})", "unknown_tool")
        validate_arguments(t, arguments)
        try:
            result = t.function(**arguments)
        except ToolError:
            raise
        except Exception as e:  # a tool's own failure is the model's observation, not our crash
            raise ToolError(f"{name}: {type(e).__name__}: {e}", "tool_error") from None
        return result if isinstance(result, str) else _json_text(result)

    def close(self) -> None:
        for t in self.tools.values():
            if t.close is not None:
                t.close()

    def __enter__(self) -> Toolbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _json_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, (int, float)) else str(value)
