"""The MCP client against real MCP servers started as subprocesses over stdio: the server Lazarus ships,
the `lazarus tools` CLI, and a server that dies in the middle of an episode."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazarus.env.tool_env import ToolEnv
from lazarus.env.tools.mcp_client import MCPServerTools, mcp_tools
from lazarus.env.tools.registry import ToolError, Toolbox

SHIPPED = f"{sys.executable} -m lazarus.env.tools.mcp_server"
LAZARUS = str(Path(sys.executable).parent / "lazarus")
DYING = f"{sys.executable} {Path(__file__).parent / 'dying_mcp_server.py'}"


@pytest.mark.xdist_group("sandbox")  # its python call is a `main.py` that test_sandbox.py's fork-bomb test counts
def test_client_lists_and_calls_the_shipped_server_tools():
    # given the shipped server as a real subprocess
    with MCPServerTools(SHIPPED, timeout_s=30) as server:
        # then it lists the calculator and the python sandbox with their JSON schemas
        schemas = {t.name: t.parameters for t in server.tools}
        assert set(schemas) == {"calculator", "python"}
        assert schemas["calculator"]["required"] == ["expression"]
        # and calls them
        assert server.call("calculator", {"expression": "347 * 29"}) == "10063"
        assert server.call("python", {"code": "print(sum(range(10)))"}) == "45"
        # and a tool's own error comes back as a ToolError naming it
        with pytest.raises(ToolError, match="division by zero"):
            server.call("calculator", {"expression": "1 / 0"})


def test_tool_env_runs_calls_through_mcp_and_validates_arguments_against_the_server_schema():
    box = Toolbox(mcp_tools(SHIPPED))
    try:
        env = ToolEnv(box)
        env.reset({"prompt": "What is 6 * 7?"})
        ok = env.step('<tool_call>{"name": "calculator", "arguments": {"expression": "6 * 7"}}</tool_call>')
        assert ok.observation.messages[0]["content"] == "42" and ok.info["failures"] == {}
        bad = env.step('<tool_call>{"name": "calculator", "arguments": {"expression": 42}}</tool_call>')
        assert bad.info["failures"] == {"bad_arguments": 1}
    finally:
        box.close()


def test_cli_calls_a_tool_through_the_mcp_server_from_any_directory(tmp_path):
    # given `lazarus tools call --mcp "lazarus tools serve-mcp"` from an empty directory, the virtualenv not on PATH
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([LAZARUS, "tools", "call", "calculator", "--args", '{"expression": "347 * 29"}',
                           "--mcp", "lazarus tools serve-mcp"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=env)
    # then it prints the result on one line
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "10063"
    listed = subprocess.run([LAZARUS, "tools", "list", "--mcp", f"{LAZARUS} tools serve-mcp"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "calculator:" in listed.stdout and "python:" in listed.stdout


def test_cli_reports_a_tool_error_on_one_line_with_exit_2(tmp_path):
    proc = subprocess.run([LAZARUS, "tools", "call", "calculator", "--args", '{"expression": "2 +"}'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cannot parse" in proc.stderr


def test_a_server_that_dies_mid_episode_gives_an_error_observation_and_a_log_line(caplog):
    # given an episode whose MCP server works, then dies during a call
    box = Toolbox(mcp_tools(DYING, timeout_s=10))
    try:
        env = ToolEnv(box)
        env.reset({"prompt": "go"})
        assert env.step('<tool_call>{"name": "echo", "arguments": {"text": "hi"}}</tool_call>') \
            .observation.messages[0]["content"] == "hi"
        # when the model calls the tool that kills it, and then calls again
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="lazarus.env.tools.mcp_client"):
            died = env.step('<tool_call>{"name": "die", "arguments": {}}</tool_call>')
            after = env.step('<tool_call>{"name": "echo", "arguments": {"text": "again"}}</tool_call>')
        # then both turns end in an error observation and a counted failure, within the deadline, not a hang
        assert time.monotonic() - started < 40
        for result in (died, after):
            assert not result.done and result.info["failures"] == {"tool_error": 1}
            assert result.observation.messages[0]["content"].startswith("error: ")
        assert any("mcp server" in r.getMessage() for r in caplog.records)
    finally:
        box.close()
