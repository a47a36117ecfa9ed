// Interoperability check: the official MCP TypeScript SDK against both cipherinfer servers.
//
// Usage: node client.ts CIPHERINFER_BINARY REMOTE_MCP_URL HOME_DIR IMAGE_DIR
//
// Against the remote server (Streamable HTTP): lists the tools (the SDK validates them, and every
// one has a title and annotations), reads describe_capabilities' structured content and checks
// that the RNS primes arrive as exact decimal strings (one is above 2^53, which a JSON number
// would round), that a failed call is a readable tool error the SDK does not reject, and that an
// unknown tool is the JSON-RPC error -32602. Against the local server (stdio, started as the
// README's host configuration does): generates keys from the client specification the remote
// sent, through this JavaScript client, and checks the parameter id the server recomputes from
// the primes (any rounding would change it); then a failed call. Prints one "ok:" line per part
// and exits non-zero on the first mismatch. Run with Node >= 23 (type stripping).

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { McpError } from "@modelcontextprotocol/sdk/types.js";

function expect(condition: boolean, what: string): void {
  if (!condition) {
    throw new Error(`mismatch: ${what}`);
  }
}

type Content = { type: string; text?: string };
type Result = { isError?: boolean; content?: Content[]; structuredContent?: Record<string, unknown> };

/** The error object of a failed call: the JSON text of its first content block. */
function errorOf(result: Result): Record<string, unknown> {
  expect(result.isError === true, `expected an error, got ${JSON.stringify(result.structuredContent)}`);
  expect(result.structuredContent === undefined, "an error with structured content");
  const text = result.content?.[0]?.text;
  expect(typeof text === "string", "an error without text content");
  return JSON.parse(text as string);
}

const REMOTE_TOOLS = [
  "delete_session", "describe_capabilities", "fetch_result_chunk", "get_session_status",
  "provision_keys_begin", "provision_keys_chunk", "provision_keys_commit",
  "remote_inference_cnn", "revoke_keys", "upload_ciphertext_chunk",
];
const LOCAL_TOOLS = [
  "export_evaluation_keys", "fhe_decrypt", "fhe_encrypt", "generate_keys", "private_classify",
];

async function checkTools(client: Client, want: string[], name: string): Promise<void> {
  const tools = (await client.listTools()).tools;
  const names = tools.map((t) => t.name).sort();
  expect(JSON.stringify(names) === JSON.stringify(want), `${name} tools ${names}`);
  for (const t of tools) {
    expect(typeof t.title === "string" && t.title.length > 0, `${name}: ${t.name} has no title`);
    const a = t.annotations ?? {};
    for (const hint of ["readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"]) {
      expect(typeof (a as Record<string, unknown>)[hint] === "boolean", `${name}: ${t.name} lacks ${hint}`);
    }
  }
}

async function remote(url: string): Promise<Record<string, unknown>> {
  const client = new Client({ name: "cipherinfer-ts-interop", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  await checkTools(client, REMOTE_TOOLS, "remote");

  const caps = (await client.callTool({ name: "describe_capabilities", arguments: {} })) as Result;
  expect(caps.isError !== true, `describe_capabilities failed: ${JSON.stringify(caps.content)}`);
  const models = (caps.structuredContent?.models ?? []) as Record<string, any>[];
  expect(models.length > 0, "no model");
  const model = models[0];
  const chain: unknown[] = model.parameters.coeff_modulus;
  expect(Array.isArray(chain) && chain.length >= 2, "coeff_modulus");
  expect(chain.every((p) => typeof p === "string" && /^[0-9]{1,20}$/.test(p as string)), `primes as strings: ${chain}`);
  const spec = model.client_spec.parameters;
  const specPrimes = [...spec.q, ...spec.p];
  expect(JSON.stringify(specPrimes) === JSON.stringify(chain), "client_spec primes = coeff_modulus");
  const big = chain.map((p) => BigInt(p as string));
  expect(big.some((p) => p > 2n ** 53n), "a prime above 2^53");
  // What a JSON number would have made of them: at least one would be wrong.
  expect(chain.some((p) => BigInt(Number(p)) !== BigInt(p as string)), "JSON numbers would round");

  // A failed call: a readable error, not an exception from output-schema validation.
  const bad = (await client.callTool({
    name: "upload_ciphertext_chunk",
    arguments: {
      client_id: "ts-nobody", session_id: "s", file_name: "input-0.ct", chunk_index: 0,
      total_chunks: 1, chunk_b64: "AAAA", auth_token: "cit_wrong",
    },
  })) as Result;
  expect(errorOf(bad).error_code === "ERROR_UNKNOWN_CLIENT", `unknown client: ${JSON.stringify(bad.content)}`);
  const weak = (await client.callTool({ name: "describe_capabilities", arguments: { security_level: 256 } })) as Result;
  expect(errorOf(weak).error_code === "ERROR_WEAK_PARAMETERS", `security_level 256: ${JSON.stringify(weak.content)}`);
  // A tool the server does not list: JSON-RPC -32602.
  let code: number | undefined;
  try {
    await client.callTool({ name: "remote_inference_rnn", arguments: {} });
  } catch (e) {
    code = e instanceof McpError ? e.code : undefined;
  }
  expect(code === -32602, `unknown tool gave ${code}`);
  await client.close();
  console.log(`ok: remote (${REMOTE_TOOLS.length} tools, ${chain.length} primes as strings)`);
  return model;
}

async function local(binary: string, remoteUrl: string, home: string, images: string, model: Record<string, any>): Promise<void> {
  const client = new Client({ name: "cipherinfer-ts-interop", version: "1.0.0" });
  await client.connect(new StdioClientTransport({
    command: binary,
    args: ["local", "--remote", remoteUrl, "--allow-dir", images],
    env: { HOME: home, RUST_LOG: "warn", PATH: process.env.PATH ?? "/usr/bin:/bin" },
    stderr: "inherit",
  }));
  await checkTools(client, LOCAL_TOOLS, "local");
  // The client specification went through JavaScript and back: the server recomputes the
  // parameter id from the primes, so a rounded prime would give another id.
  const keys = (await client.callTool({
    name: "generate_keys",
    arguments: { client_id: "ts-client", model: model.name, client_spec: model.client_spec },
  })) as Result;
  expect(keys.isError !== true, `generate_keys failed: ${JSON.stringify(keys.content)}`);
  const made = keys.structuredContent as Record<string, any>;
  expect(made.parameter_id === model.parameter_id, `parameter id ${made.parameter_id} != ${model.parameter_id}`);
  expect(/^[0-9a-f]{64}$/.test(made.identity), `identity ${made.identity}`);
  expect(
    JSON.stringify(made.parameters.coeff_modulus) === JSON.stringify(model.parameters.coeff_modulus),
    "generate_keys echoes the same prime chain",
  );
  const relative = (await client.callTool({
    name: "fhe_encrypt",
    arguments: { client_id: "ts-client", image_path: "relative.png", session_dir: "/tmp" },
  })) as Result;
  expect(errorOf(relative).error_code === "ERROR_PATH_NOT_ALLOWED", `relative path: ${JSON.stringify(relative.content)}`);
  await client.close();
  console.log(`ok: local (${LOCAL_TOOLS.length} tools, keys for ${model.name})`);
}

const [binary, remoteUrl, home, images] = process.argv.slice(2);
if (!binary || !remoteUrl || !home || !images) {
  console.error("usage: node client.ts CIPHERINFER_BINARY REMOTE_MCP_URL HOME_DIR IMAGE_DIR");
  process.exit(2);
}
try {
  const model = await remote(remoteUrl);
  await local(binary, remoteUrl, home, images, model);
} catch (e) {
  console.error(e);
  process.exit(1);
}
