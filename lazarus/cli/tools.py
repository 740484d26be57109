"""`lazarus tools list|call|serve-mcp`: try a tool by hand, or serve the built-in tools over MCP (stdio).

`list` and `call` use the built-in tools (calculator, python), or with `--mcp "COMMAND ARGS"` the tools of
that MCP server, started as a subprocess through the real MCP client. `call` prints the result, or the
error, on one line.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from lazarus.errors import LazarusError

app = typer.Typer(help="Tools the model can call: list them, call one by hand, serve them over MCP.",
                  no_args_is_help=True)


class ToolUsageError(LazarusError):
    """A bad `lazarus tools` argument (printed as one line, exit 2)."""


def _toolbox(mcp: Optional[str], timeout_s: float):
    from lazarus.env.tools.registry import ToolError, Toolbox

    if mcp:
        from lazarus.env.tools.mcp_client import mcp_tools

        try:
            return Toolbox(mcp_tools(mcp, timeout_s=timeout_s))
        except ToolError as e:
            raise ToolUsageError(f"--mcp: {e}") from None
    from lazarus.env.tools.calculator import calculator
    from lazarus.env.tools.sandbox import python_tool

    return Toolbox([calculator, python_tool()])


ARGS_HELP = "Arguments as a JSON object, e.g. '{\"expression\": \"2+2\"}'."
MCP_HELP = 'Use the tools of this MCP server (a command started over stdio, e.g. "lazarus tools serve-mcp").'


@app.command("list")
def list_tools(mcp: Optional[str] = typer.Option(None, "--mcp", help=MCP_HELP),
               timeout_s: float = typer.Option(30.0, "--timeout", help="Seconds to wait for the server.")):
    """Each tool's name, description and JSON-schema parameters."""
    with _toolbox(mcp, timeout_s) as box:
        for t in box.tools.values():
            typer.echo(f"{t.name}: {t.description}")
            typer.echo(f"  parameters: {json.dumps(t.parameters)}")


@app.command("call")
def call_tool(name: str = typer.Argument(..., help="Tool name (see `lazarus tools list`)."),
              args: str = typer.Option("{}", "--args", help=ARGS_HELP),
              mcp: Optional[str] = typer.Option(None, "--mcp", help=MCP_HELP),
              timeout_s: float = typer.Option(30.0, "--timeout", help="Deadline of the call in seconds.")):
    """Call one tool and print its result (or its error) on one line."""
    from lazarus.env.tools.registry import ToolError

    try:
        arguments = json.loads(args)
    except json.JSONDecodeError as e:
        raise ToolUsageError(f"--args: not JSON ({e.msg} at character {e.pos})") from None
    with _toolbox(mcp, timeout_s) as box:
        try:
            result = box.call(name, arguments)
        except ToolError as e:
            raise ToolUsageError(str(e)) from None
    typer.echo(result.replace("\n", "\\n"))


@app.command("serve-mcp")
def serve_mcp():
    """Serve the built-in tools (calculator, python sandbox) as an MCP server over stdio."""
    from lazarus.env.tools.mcp_server import serve_stdio

    serve_stdio()
