"""A real MCP server (stdio) whose `die` tool kills the server process mid-call: for the client's tests."""

import os

from mcp.server import MCPServer

server = MCPServer("dying", log_level="ERROR")


@server.tool()
def echo(text: str) -> str:
    """Return the text."""
    return text


@server.tool()
def die() -> str:
    """Exit the server process at once, without answering."""
    os._exit(1)


if __name__ == "__main__":
    server.run("stdio")
