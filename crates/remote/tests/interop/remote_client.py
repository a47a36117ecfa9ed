"""Interoperability check: the official MCP Python SDK against the real cipherinfer remote server.

Usage: python3 remote_client.py BASE_URL

Over Streamable HTTP (initialize handshake and the 2026-07-28 per-request lifecycle) and legacy
HTTP+SSE: lists the tools (the SDK validates their schemas), reads the capabilities (the SDK
validates the structured result against the published output schema), and checks that
client-caused failures come back as tool errors with a machine-readable error_code.
Exits non-zero on the first mismatch. Needs `pip install mcp==2.3.0`.
"""

from __future__ import annotations

import json
import sys
import traceback

import anyio
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

EXPECTED = {
    "describe_capabilities", "provision_keys_begin", "provision_keys_chunk",
    "provision_keys_commit", "revoke_keys", "upload_ciphertext_chunk", "remote_inference_cnn",
    "fetch_result_chunk", "get_session_status", "delete_session",
}


class Mismatch(Exception):
    pass


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Mismatch(what)


def error_of(result) -> dict:
    """The error object of a failed call: the JSON text of its first content block (the servers
    send no structuredContent with an error, which the output schema would not admit)."""
    expect(result.is_error, f"expected an error, got {result.structured_content}")
    expect(result.structured_content is None, f"an error with structured content: {result.structured_content}")
    return json.loads(result.content[0].text)


async def exercise(name: str, client: Client) -> None:
    tools = await client.list_tools()
    names = {t.name for t in tools.tools}
    expect(names == EXPECTED, f"{name}: tools {sorted(names)}")
    upload = next(t for t in tools.tools if t.name == "upload_ciphertext_chunk")
    props = upload.input_schema.get("properties", {})
    for field in ("client_id", "session_id", "file_name", "chunk_index", "total_chunks", "chunk_b64", "auth_token"):
        expect(field in props, f"{name}: upload_ciphertext_chunk lacks {field}")

    caps = await client.call_tool("describe_capabilities", {})
    expect(not caps.is_error, f"{name}: describe_capabilities failed: {caps}")
    models = (caps.structured_content or {}).get("models", [])
    expect([m["name"] for m in models] == ["mnist-cnn"], f"{name}: models {models and models[0].get('name')}")
    expect(models[0]["output_shape"] == [10], f"{name}: output shape")

    bad = await client.call_tool("upload_ciphertext_chunk", {
        "client_id": "nobody", "session_id": "s", "file_name": "input-0.ct", "chunk_index": 0,
        "total_chunks": 1, "chunk_b64": "AAAA", "auth_token": "cit_wrong"})
    expect(bad.is_error is True, f"{name}: a call for an unknown client must be a tool error")
    # Distinct from a wrong token: the client knows to run Step 0 (again).
    expect(error_of(bad).get("error_code") == "ERROR_UNKNOWN_CLIENT", f"{name}: {bad.content}")

    hostile = await client.call_tool("upload_ciphertext_chunk", {
        "client_id": "nobody", "session_id": "s", "file_name": "../../etc/passwd", "chunk_index": 0,
        "total_chunks": 1, "chunk_b64": "AAAA", "auth_token": "cit_wrong"})
    expect(error_of(hostile).get("error_code") == "ERROR_INVALID_FILE_NAME", f"{name}: {hostile.content}")
    print(f"ok: {name} (protocol {client.protocol_version}, {len(names)} tools)")


async def main(base: str) -> None:
    mcp_url = f"{base}/mcp"
    async with Client(streamable_http_client(mcp_url, max_sse_event_size=None), mode="legacy") as client:
        await exercise("streamable-http/initialize", client)
    async with Client(streamable_http_client(mcp_url, max_sse_event_size=None), mode="auto") as client:
        await exercise("streamable-http/2026-07-28", client)
    async with Client(sse_client(f"{base}/sse"), mode="legacy") as client:
        await exercise("legacy-sse", client)


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
