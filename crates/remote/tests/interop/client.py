"""Interoperability check: the official MCP Python SDK against a cipherinfer transport server.

Usage: python3 client.py BASE_URL      (for example http://127.0.0.1:8080)

Connects over Streamable HTTP (`BASE_URL/mcp`) with the initialize handshake and with the
2026-07-28 per-request lifecycle, and over the legacy HTTP+SSE transport (`BASE_URL/sse`); on
each it lists the tools of the transport test fixture and calls them. Exits non-zero on the
first mismatch. Needs `pip install mcp==2.3.0`.
"""

from __future__ import annotations

import sys
import traceback
from importlib.metadata import version

import anyio
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

EXPECTED_TOOLS = {"echo_size", "make_blob", "slow_count"}
# mcp 2.3.0's legacy SSE client caps one event at 1 MiB and has no knob for it; a structured
# result carries its JSON twice (structuredContent and a text block), so stay well below.
LEGACY_SSE_EVENT_CAP = 1024 * 1024


class Mismatch(Exception):
    pass


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Mismatch(what)


async def exercise(name: str, client: Client, expected_version: str, blob_bytes: int) -> None:
    expect(
        client.protocol_version == expected_version,
        f"{name}: negotiated {client.protocol_version}, expected {expected_version}",
    )

    tools = await client.list_tools()
    names = {tool.name for tool in tools.tools}
    expect(names == EXPECTED_TOOLS, f"{name}: tools {sorted(names)}")
    slow = next(tool for tool in tools.tools if tool.name == "slow_count")
    expect("steps" in slow.input_schema.get("properties", {}), f"{name}: slow_count input schema")
    expect(slow.output_schema is not None, f"{name}: slow_count has no output schema")

    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    result = await client.call_tool("slow_count", {"steps": 3, "delay_ms": 5}, progress_callback=on_progress)
    expect(not result.is_error, f"{name}: slow_count failed: {result}")
    expect(
        result.structured_content == {"counted": 3, "progress_reported": True},
        f"{name}: slow_count returned {result.structured_content}",
    )
    expect(progress == [1.0, 2.0, 3.0], f"{name}: progress {progress}")

    big = "q" * (3 * 1024 * 1024 // 2)  # 1.5 MiB argument
    result = await client.call_tool("echo_size", {"data": big})
    expect(result.structured_content == {"bytes": len(big)}, f"{name}: echo_size returned {result.structured_content}")

    result = await client.call_tool("echo_size", {"data": ""})
    expect(result.is_error is True, f"{name}: empty echo_size should be a tool error")
    expect(
        (result.structured_content or {}).get("error_code") == "ERROR_EMPTY",
        f"{name}: tool error content {result.structured_content}",
    )

    result = await client.call_tool("make_blob", {"bytes": blob_bytes})
    data = (result.structured_content or {}).get("data", "")
    expect(len(data) == blob_bytes, f"{name}: make_blob returned {len(data)} bytes, expected {blob_bytes}")
    print(f"ok: {name} (protocol {client.protocol_version}, {len(names)} tools, progress {progress})")


async def main(base: str) -> None:
    print(f"mcp {version('mcp')} against {base}")
    mcp_url = f"{base}/mcp"

    async with Client(streamable_http_client(mcp_url, max_sse_event_size=None), mode="legacy") as client:
        await exercise("streamable-http/initialize", client, "2025-11-25", 2 * 1024 * 1024)

    async with Client(streamable_http_client(mcp_url, max_sse_event_size=None), mode="auto") as client:
        await exercise("streamable-http/2026-07-28", client, "2026-07-28", 2 * 1024 * 1024)

    async with Client(sse_client(f"{base}/sse"), mode="legacy") as client:
        await exercise("legacy-sse", client, "2025-11-25", LEGACY_SSE_EVENT_CAP // 4)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        anyio.run(main, sys.argv[1].rstrip("/"))
    except Mismatch as mismatch:
        print(f"MISMATCH: {mismatch}", file=sys.stderr)
        sys.exit(1)
    except BaseException:
        traceback.print_exc()
        sys.exit(2)
