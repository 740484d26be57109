"""MCP client: any MCP server's tools as Lazarus `Tool`s, over stdio with the official `mcp` SDK (2.x).

`MCPServerTools(command)` starts the server as a subprocess (`command` is a shell-style string such as
`"lazarus tools serve-mcp"`), lists its tools and keeps the session open on a background event-loop thread,
so the synchronous rollout can call them. Every call has a deadline (`timeout_s`); a server that dies or
stops answering turns the call into a `ToolError` (the model reads it as an observation, the actor logs it)
rather than a hung rollout. The SDK's stdio transport passes the child only HOME, PATH and a few more
variables; PYTHONPATH, VIRTUAL_ENV and the LAZARUS_* variables are passed through explicitly so a server
from this checkout runs the same code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import sys
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from lazarus.env.tools.registry import Tool, ToolError

log = logging.getLogger(__name__)

PASSED_ENV = ("PYTHONPATH", "VIRTUAL_ENV", "LANG", "LC_ALL", "TMPDIR")


class MCPServerTools:
    """A live session with one MCP server over stdio; `.tools` are its tools as Lazarus tools."""

    def __init__(self, command: str, timeout_s: float = 30.0, start_timeout_s: float = 60.0):
        argv = shlex.split(command)
        if not argv:
            raise ToolError("mcp: empty server command", "tool_error")
        self.command = command
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"mcp:{argv[0]}", daemon=True)
        self._thread.start()
        self._client = None
        self._closing: asyncio.Event | None = None
        self._session: asyncio.Future | None = None
        ready: Future = Future()
        self._session = asyncio.run_coroutine_threadsafe(self._hold(argv, ready), self._loop)
        try:
            listed = ready.result(timeout=start_timeout_s)
        except FutureTimeout:
            self.close()
            raise ToolError(f"mcp server {command!r}: no tool list within {start_timeout_s:.0f}s",
                            "tool_error") from None
        except Exception as e:
            self.close()
            raise ToolError(f"mcp server {command!r} did not start: {_describe(e)}", "tool_error") from None
        self.tools = [Tool(t.name, t.description or "", dict(t.input_schema or {"type": "object"}),
                           self._caller(t.name), close=None) for t in listed]

    async def _hold(self, argv: list[str], ready: Future) -> None:
        from mcp import Client, StdioServerParameters

        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.update({k: v for k, v in os.environ.items() if k.startswith("LAZARUS_")})
        params = StdioServerParameters(command=_executable(argv[0]), args=argv[1:], env=env)
        self._closing = asyncio.Event()
        try:
            async with Client(params, read_timeout_seconds=self.timeout_s) as client:
                self._client = client
                listed = await client.list_tools()
                ready.set_result(list(listed.tools))
                await self._closing.wait()
        except BaseException as e:  # noqa: BLE001  (anything the SDK raises ends this session)
            if not ready.done():
                ready.set_exception(e if isinstance(e, Exception) else RuntimeError(repr(e)))
            else:
                log.warning("mcp server %r: session ended: %s", self.command, _describe(e))
            if not isinstance(e, Exception):
                raise
        finally:
            self._client = None

    def _caller(self, name: str):
        def call(**arguments):
            return self.call(name, arguments)

        return call

    def call(self, name: str, arguments: dict) -> str:
        """The tool's text (its structured content as JSON when it has no text); `ToolError` on any failure."""
        if self._client is None:
            raise ToolError(f"mcp server {self.command!r} is not running", "tool_error")
        future = asyncio.run_coroutine_threadsafe(self._client.call_tool(name, arguments), self._loop)
        try:
            result = future.result(timeout=self.timeout_s + 5)
        except FutureTimeout:
            future.cancel()
            log.warning("mcp server %r: %s timed out after %.0fs", self.command, name, self.timeout_s)
            raise ToolError(f"{name}: the MCP server did not answer within {self.timeout_s:.0f}s",
                            "tool_error") from None
        except Exception as e:
            log.warning("mcp server %r: %s failed: %s", self.command, name, _describe(e))
            raise ToolError(f"{name}: MCP call failed: {_describe(e)}", "tool_error") from None
        text = "\n".join(getattr(block, "text", "") for block in result.content if getattr(block, "text", None))
        if not text and result.structured_content is not None:
            import json

            text = json.dumps(result.structured_content, ensure_ascii=False)
        if result.is_error:
            raise ToolError(f"{name}: {text or 'error'}", "tool_error")
        return text

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
        if self._session is not None:
            try:
                self._session.result(timeout=10)
            except Exception:  # noqa: BLE001  (closing: the session's own errors were logged)
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> MCPServerTools:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _executable(name: str) -> str:
    """`name` as given when PATH finds it, else this Python's scripts directory's copy (so
    `lazarus tools serve-mcp` works from a virtualenv that is not activated)."""
    if os.sep in name or shutil.which(name):
        return name
    sibling = Path(sys.executable).parent / name
    return str(sibling) if sibling.is_file() else name


def _describe(e: BaseException) -> str:
    inner = getattr(e, "exceptions", None)  # anyio task groups wrap the real error
    if inner:
        return _describe(inner[0])
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def mcp_tools(command: str, timeout_s: float = 30.0) -> list[Tool]:
    """The tools of the MCP server started by `command`; closing any one of them ends the session."""
    server = MCPServerTools(command, timeout_s=timeout_s)
    for t in server.tools:
        t.close = server.close
    return server.tools
