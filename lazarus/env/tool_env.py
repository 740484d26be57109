"""The tool-use env: the model calls tools in the Hermes/Qwen form, the env answers with tool messages.

A model turn that contains `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (one or more) is a
tool turn: each call is run and its result (or its error) becomes one `tool` message. A turn without a call
is the final answer and ends the episode. A malformed call (unclosed tag, bad JSON, no name), an unknown
tool, arguments that do not fit the tool's schema, or a tool that fails all become an `error: ...` tool
message the model can read, and a counted failure (`info["failures"]` by kind); none raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lazarus.env.protocol import Observation, StepResult
from lazarus.env.shaping import Shaping
from lazarus.env.tools.registry import ToolError, Toolbox

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)
MAX_RESULT_CHARS = 16_000  # before tokenization; the rollout then truncates to env.observation_max_tokens


@dataclass
class ToolCall:
    name: str | None
    arguments: dict | None
    error: ToolError | None = None  # set when the call text itself is malformed


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every `<tool_call>` in `text`, in order; malformed ones carry their `error`."""
    calls = []
    for body in _CALL.findall(text):
        calls.append(_parse_call(body.strip()))
    unclosed = text.count(CALL_OPEN) - len(calls)
    if unclosed > 0:
        calls.append(ToolCall(None, None, ToolError(f"a {CALL_OPEN} is not closed by {CALL_CLOSE}", "malformed")))
    return calls


def _parse_call(body: str) -> ToolCall:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCall(None, None, ToolError(f"the tool call is not valid JSON ({e.msg} at character {e.pos})",
                                              "malformed"))
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall(None, None, ToolError('a tool call must be {"name": ..., "arguments": {...}}', "malformed"))
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ToolCall(obj["name"], None, ToolError(f"{obj['name']}: arguments are not a JSON object",
                                                         "bad_arguments"))
    return ToolCall(obj["name"], arguments)


class ToolEnv:
    """One episode of tool use against a shared `Toolbox`."""

    def __init__(self, toolbox: Toolbox, shaping: Shaping = Shaping(), describe_tools: bool = True):
        self.toolbox = toolbox
        self.shaping = shaping
        self.describe_tools = describe_tools

    def reset(self, task: dict) -> Observation:
        if not self.describe_tools:
            return Observation()
        prompt = task.get("prompt")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt or [])
        return Observation(messages, self.toolbox.schemas())

    def step(self, action_text: str) -> StepResult:
        calls = parse_tool_calls(action_text)
        if not calls:
            return StepResult(Observation(), 0.0, True, {"tool_calls": 0, "failures": {}})
        messages, failures = [], {}
        for call in calls:
            try:
                if call.error is not None:
                    raise call.error
                result = self.toolbox.call(call.name, call.arguments)
                content = result[:MAX_RESULT_CHARS]
            except ToolError as e:
                failures[e.kind] = failures.get(e.kind, 0) + 1
                content = f"error: {e}"[:MAX_RESULT_CHARS]
            messages.append({"role": "tool", "name": call.name or "", "content": content})
        failed = sum(failures.values())
        return StepResult(Observation(messages), self.shaping.step_reward(len(calls), failed), False,
                          {"tool_calls": len(calls), "failures": failures})
