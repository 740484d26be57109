"""The MCP server Lazarus ships: the built-in tools (calculator, python sandbox) over stdio.

`lazarus tools serve-mcp` runs it, so `--mcp "lazarus tools serve-mcp"` (or `env.tools: [{mcp: ...}]`)
works wherever Lazarus is installed; it is also the demo's and the tests' real MCP server. It imports
neither MLX nor the model code, so it starts in about a second.
"""

from __future__ import annotations

from lazarus.env.tools.registry import Tool


def build_server(tools: list[Tool] | None = None):
    """An `mcp` SDK `MCPServer` serving `tools` (default: calculator and python)."""
    from mcp.server import MCPServer

    if tools is None:
        from lazarus.env.tools.calculator import calculator
        from lazarus.env.tools.sandbox import python_tool

        tools = [calculator, python_tool()]
    server = MCPServer("lazarus-tools", instructions="Lazarus' built-in tools: exact arithmetic and a Python sandbox.",
                       log_level="ERROR")
    for t in tools:
        server.tool(name=t.name, description=t.description, structured_output=False)(_reported(t.function))
    return server


def _reported(function):
    """`function` with our `ToolError` turned into the SDK's, whose message the client sees as the result."""
    import functools

    from mcp.server.mcpserver.exceptions import ToolError as MCPToolError

    from lazarus.env.tools.registry import ToolError

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ToolError as e:
            raise MCPToolError(str(e)) from None

    return call


def serve_stdio() -> None:
    build_server().run("stdio")


if __name__ == "__main__":
    serve_stdio()
