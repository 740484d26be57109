"""An RNN expert as a tool: the orchestrator's way for a language model to delegate to a control policy.

`expert_tool("projectile")` wraps a trained expert (a directory, or a registered `NAME[@vN]`) as a `Tool`
whose JSON-schema arguments are the expert's task (`lazarus.experts.envs.task_schema`) and whose result
is the outcome of running it: one deterministic episode, summarised (return, steps, the last step's info:
for the projectile the launch angle, landing distance, miss and hit, floats to 2 decimals: a language model
reads and copies them, and more digits would only lengthen its observation). In `env.tools` it is written
`{expert: NAME_OR_DIR}`, beside calculator, python and MCP servers, so one episode can think, call a tool,
delegate to an expert and answer.
"""

from __future__ import annotations

import re

from lazarus.env.tools.registry import Tool, ToolError


def expert_tool(name_or_dir: str, tool_name: str | None = None) -> Tool:
    from lazarus.errors import LazarusError
    from lazarus.experts.envs import task_schema
    from lazarus.experts.registry import load_expert, resolve

    try:
        policy, _ = load_expert(name_or_dir)
    except LazarusError as e:
        raise ToolError(f"expert {name_or_dir}: {e}") from None
    env = policy.spec.env
    name = tool_name or "expert_" + re.sub(r"[^a-z0-9]+", "_", env.lower().split("-v")[0]).strip("_")
    directory = str(resolve(name_or_dir))

    def run(**task) -> dict:
        from lazarus.experts.episodes import run_expert

        try:
            result = run_expert(directory, task)
        except LazarusError as e:
            raise ToolError(f"{name}: {e}", "bad_arguments") from None
        outcome = {key: round(value, 2) if isinstance(value, float) else value
                   for key, value in result["outcome"].items()}
        return {"return": round(result["return"], 4), "steps": result["steps"], "outcome": outcome}

    description = (f"Delegate to the trained {getattr(policy.spec, 'arch', 'RNN')} expert for {env}: it runs one "
                   f"episode of the task and returns its outcome.")
    return Tool(name, description, task_schema(env), run)
