"""Envs and toolboxes from the `env` settings a `RolloutTask` carries (`cfg.env.model_dump()`).

Toolboxes live for the whole process, one per distinct tool list, so an MCP server is started once and
its session reused by every rollout; `close_toolboxes()` (also run at exit) ends them.
"""

from __future__ import annotations

import atexit
import importlib
import json
import threading
from collections.abc import Callable

from lazarus.config import ConfigError, EnvConfig
from lazarus.env.shaping import Shaping
from lazarus.env.tool_env import ToolEnv
from lazarus.env.tools.registry import Tool, ToolError, Toolbox

_TOOLBOXES: dict[str, Toolbox] = {}
_LOCK = threading.Lock()


def env_settings(env: dict) -> EnvConfig:
    try:
        return EnvConfig.model_validate(env)
    except ValueError as e:
        raise ConfigError(f"env: {e}") from None


def build_tools(spec: str | dict, settings: EnvConfig, where: str) -> list[Tool]:
    """The tools one entry of `env.tools` names."""
    if isinstance(spec, dict) and set(spec) == {"expert"}:
        from lazarus.env.tools.expert import expert_tool

        try:
            return [expert_tool(spec["expert"])]
        except ToolError as e:
            raise ConfigError(f"{where}: {e}") from None
    if isinstance(spec, dict):
        if set(spec) != {"mcp"}:
            raise ConfigError(f"{where}: a tool map must be {{mcp: \"COMMAND ARGS\"}} or {{expert: NAME_OR_DIR}}, "
                              f"got keys {sorted(spec)}")
        from lazarus.env.tools.mcp_client import mcp_tools

        try:
            return mcp_tools(spec["mcp"], timeout_s=settings.tool_timeout_s)
        except ToolError as e:
            raise ConfigError(f"{where}: {e}") from None
    if spec == "calculator":
        from lazarus.env.tools.calculator import calculator

        return [calculator]
    if spec == "python":
        from lazarus.env.tools.sandbox import SandboxLimits, python_tool

        return [python_tool(SandboxLimits(cpu_seconds=settings.sandbox_cpu_s,
                                          memory_bytes=settings.sandbox_memory_mb << 20,
                                          wall_seconds=settings.sandbox_wall_s))]
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ConfigError(f"{where}: unknown tool {spec!r} (calculator, python, module:attr or {{mcp: CMD}})")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where}: cannot load {spec!r} ({e})") from None
    if not isinstance(value, Tool):
        raise ConfigError(f"{where}: {spec!r} is not a Tool (decorate the function with @tool)")
    return [value]


def toolbox(settings: EnvConfig) -> Toolbox:
    """The process-wide toolbox for `settings.tools` (built on first use)."""
    key = json.dumps([settings.tools, settings.tool_timeout_s, settings.sandbox_cpu_s, settings.sandbox_memory_mb,
                      settings.sandbox_wall_s], sort_keys=True)
    with _LOCK:
        if key not in _TOOLBOXES:
            box = Toolbox()
            try:
                for i, spec in enumerate(settings.tools):
                    for t in build_tools(spec, settings, f"env.tools.{i}"):
                        box.add(t)
            except Exception:
                box.close()
                raise
            _TOOLBOXES[key] = box
        return _TOOLBOXES[key]


def close_toolboxes() -> None:
    with _LOCK:
        for box in _TOOLBOXES.values():
            box.close()
        _TOOLBOXES.clear()


atexit.register(close_toolboxes)


def env_factory(settings: EnvConfig) -> Callable[[], object]:
    """A function that makes a fresh env for one episode."""
    box = toolbox(settings)
    if settings.name == "tools":
        shaping = Shaping(settings.turn_penalty, settings.failed_call_penalty, settings.format_reward)
        return lambda: ToolEnv(box, shaping, describe_tools=settings.describe_tools)
    module_name, sep, attr = (settings.name or "").partition(":")
    if not sep:
        raise ConfigError(f"env.name: unknown env {settings.name!r} (tools, or module:factory)")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"env.name: cannot load {settings.name!r} ({e})") from None
    raw = settings.model_dump()
    return lambda: factory(raw, box)
