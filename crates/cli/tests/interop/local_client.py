"""Interoperability check: the official MCP Python SDK drives the cipherinfer local crypto server.

Usage: python3 local_client.py CIPHERINFER_BINARY HOME_DIR REMOTE_URL IMAGE

Starts `cipherinfer local` over stdio exactly as the README's host configuration does (`local
--remote URL --allow-dir <the image's directory>`, the key store at its default place under
HOME_DIR), as an MCP host such as Claude Desktop would; lists its
tools (the SDK validates their schemas), checks that a missing image is a tool error with a
machine-readable error_code, then runs `private_classify` on IMAGE against the remote server at
REMOTE_URL with a progress callback, and prints the structured result as the last line (JSON).
Exits non-zero on the first mismatch. Needs `pip install mcp==2.3.0`.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

EXPECTED = {"generate_keys", "export_evaluation_keys", "fhe_encrypt", "fhe_decrypt", "private_classify"}


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


async def main(binary: str, home: str, remote: str, image: str) -> None:
    pictures = os.path.dirname(image)
    params = StdioServerParameters(
        command=binary,
        args=["local", "--remote", remote, "--allow-dir", pictures],
        env={"RUST_LOG": "warn", "HOME": home},
    )
    async with Client(stdio_client(params), mode="legacy") as client:
        tools = await client.list_tools()
        names = {t.name for t in tools.tools}
        expect(names == EXPECTED, f"tools {sorted(names)}")
        encrypt = next(t for t in tools.tools if t.name == "fhe_encrypt")
        props = encrypt.input_schema.get("properties", {})
        for field in ("client_id", "image_path", "session_dir"):
            expect(field in props, f"fhe_encrypt lacks {field} (draft 6.1)")
        decrypt = next(t for t in tools.tools if t.name == "fhe_decrypt")
        props = decrypt.input_schema.get("properties", {})
        for field in ("client_id", "encrypted_logit_path"):
            expect(field in props, f"fhe_decrypt lacks {field} (draft 6.5)")
        print(f"ok: tools ({len(names)}, protocol {client.protocol_version})")

        missing = await client.call_tool("private_classify", {"image_path": image + ".missing"})
        expect(missing.is_error is True, f"a missing image must be a tool error: {missing}")
        code = error_of(missing).get("error_code")
        expect(code == "ERROR_FILE_NOT_FOUND", f"missing image: {missing.content}")
        outside = await client.call_tool("private_classify", {"image_path": "/etc/hostname"})
        code = error_of(outside).get("error_code")
        expect(code == "ERROR_PATH_NOT_ALLOWED", f"image outside --allow-dir: {outside.content}")
        relative = await client.call_tool("fhe_encrypt", {
            "client_id": "nobody", "image_path": "relative.png", "session_dir": "/tmp"})
        code = error_of(relative).get("error_code")
        expect(code == "ERROR_PATH_NOT_ALLOWED", f"relative path: {relative.content}")
        print("ok: error path")

        steps: list[float] = []
        totals: list[float | None] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            steps.append(value)
            totals.append(total)

        result = await client.call_tool(
            "private_classify", {"image_path": image, "top_k": 3}, progress_callback=progress)
        expect(not result.is_error, f"private_classify failed: {result.content}")
        out = result.structured_content or {}
        expect(len(out.get("top_k", [])) == 3, f"top_k: {out}")
        expect(abs(sum(out.get("probabilities", [])) - 1.0) < 1e-6, "probabilities sum to 1")
        expect(len(steps) >= 3, f"{len(steps)} progress notifications")
        # Each carries its total, and the values increase (MCP progress rules).
        expect(all(t == 100.0 for t in totals), f"progress totals {totals}")
        expect(all(a < b for a, b in zip(steps, steps[1:])), f"progress values {steps}")
        expect(all(0.0 < v < 100.0 for v in steps), f"progress values {steps}")
        print(f"ok: progress ({len(steps)} notifications)")
        print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    try:
        anyio.run(main, *sys.argv[1:])
    except Exception:
        traceback.print_exc()
        sys.exit(1)
