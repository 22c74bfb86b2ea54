// Drives the gateway with the official TypeScript SDK's client, as desktop
// apps and IDEs built on it do, and prints what each step saw as one JSON
// object. A step that fails records its error instead of ending the run, so
// the Python test that runs this reports every difference at once.
//
//   node ts_client.mjs SDK_DIR URL [SKIP]
//
// SDK_DIR is the package's `dist/esm` folder (imported by path, because
// this file does not live beside the npm install); SKIP names steps not to
// run, comma-separated.

const [sdk, url, skip] = process.argv.slice(2);
const skipped = new Set((skip ?? "").split(",").filter(Boolean));
const { Client } = await import(`${sdk}/client/index.js`);
const { StreamableHTTPClientTransport } = await import(`${sdk}/client/streamableHttp.js`);
const types = await import(`${sdk}/types.js`);

const report = { steps: {} };
const seen = { logs: [], progress: [], elicitations: [], samplings: [], roots: 0, toolsChanged: 0, updated: [] };

async function step(name, body) {
  if (skipped.has(name)) return;
  try {
    report.steps[name] = { ok: true, value: await body() };
  } catch (e) {
    report.steps[name] = { ok: false, error: String(e?.message ?? e), code: e?.code ?? null };
  }
}

// Waits for `condition` (which may be async), for at most `ms`; its last value.
async function until(condition, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const met = await condition();
    if (met || Date.now() >= deadline) return met;
    await new Promise((r) => setTimeout(r, 10));
  }
}

const text = (result) =>
  (result.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("");

const client = new Client(
  { name: "ts-sdk-test", version: "1.0.0" },
  { capabilities: { elicitation: { form: {} }, sampling: {}, roots: { listChanged: true } } },
);
client.setRequestHandler(types.ElicitRequestSchema, async (request) => {
  seen.elicitations.push(request.params.message);
  // Every string the form asks for, as `ts-<field>`.
  const fields = Object.entries(request.params.requestedSchema?.properties ?? {});
  const content = Object.fromEntries(fields.filter(([, s]) => s.type === "string").map(([k]) => [k, `ts-${k}`]));
  return { action: "accept", content };
});
client.setRequestHandler(types.CreateMessageRequestSchema, async (request) => {
  seen.samplings.push(request.params.messages.map((m) => m.content.text).join(""));
  return { role: "assistant", content: { type: "text", text: "sampled by ts" }, model: "ts-model" };
});
client.setRequestHandler(types.ListRootsRequestSchema, async () => {
  seen.roots += 1;
  return { roots: [{ uri: "file:///srv/ts", name: "ts" }] };
});
client.setNotificationHandler(types.LoggingMessageNotificationSchema, (n) => {
  seen.logs.push(n.params);
});
client.setNotificationHandler(types.ToolListChangedNotificationSchema, () => {
  seen.toolsChanged += 1;
});
client.setNotificationHandler(types.ResourceUpdatedNotificationSchema, (n) => {
  seen.updated.push(n.params.uri);
});

const transport = new StreamableHTTPClientTransport(new URL(url));
await client.connect(transport);
report.session = Boolean(transport.sessionId);
report.protocolVersion = transport.protocolVersion ?? null;
report.server = client.getServerVersion() ?? null;
report.capabilities = client.getServerCapabilities() ?? null;

await step("listTools", async () => {
  const { tools } = await client.listTools();
  return tools.map((t) => t.name).sort();
});
await step("echo", async () => text(await client.callTool({ name: "fx__echo", arguments: { message: "hi from ts" } })));
await step("structured", async () => {
  // The SDK checks structuredContent against the listed outputSchema.
  const r = await client.callTool({ name: "fx__add", arguments: { a: 2, b: 3 } });
  return r.structuredContent ?? text(r);
});
await step("progress", async () => {
  const r = await client.callTool({ name: "fx__test_tool_with_progress", arguments: {} }, undefined, {
    onprogress: (p) => seen.progress.push(p),
  });
  return { isError: Boolean(r.isError), progress: seen.progress.map((p) => p.progress) };
});
await step("elicitation", async () => {
  const r = await client.callTool({ name: "fx__test_elicitation", arguments: { message: "who are you?" } });
  return { text: text(r), asked: [...seen.elicitations] };
});
await step("sampling", async () => {
  const r = await client.callTool({ name: "fx__test_sampling", arguments: { prompt: "ts prompt" } });
  return { text: text(r), asked: [...seen.samplings] };
});
await step("logging", async () => {
  await client.setLoggingLevel("debug");
  const r = await client.callTool({ name: "fx__test_tool_with_logging", arguments: {} });
  // An rmcp upstream sends its log lines on its GET stream, which is not
  // ordered with the call's answer: the last line may come after it.
  await until(() => seen.logs.length >= 3);
  return { text: text(r), lines: seen.logs.length };
});
await step("roots", async () => {
  // A 2026-07-28 tool that needs the client's roots: the gateway asks this
  // 2025 client with a `roots/list` request of its own.
  const r = await client.callTool({ name: "fx__test_input_required_result_list_roots", arguments: {} });
  return { text: text(r), isError: Boolean(r.isError), asked: seen.roots };
});
await step("inputRequired", async () => {
  const before = seen.elicitations.length;
  const r = await client.callTool({ name: "fx__test_input_required_result_elicitation", arguments: {} });
  return { text: text(r), isError: Boolean(r.isError), asked: seen.elicitations.slice(before) };
});
await step("unknownTool", async () => {
  const r = await client.callTool({ name: "fx__no_such_tool", arguments: {} });
  return { isError: Boolean(r.isError), text: text(r) };
});
await step("resources", async () => {
  const { resources } = await client.listResources();
  const { resourceTemplates } = await client.listResourceTemplates();
  const uri = resources.find((r) => r.uri.endsWith("static-text"))?.uri;
  const read = uri ? await client.readResource({ uri }) : null;
  return {
    uris: resources.map((r) => r.uri).sort(),
    templates: resourceTemplates.map((t) => t.uriTemplate).sort(),
    read: read?.contents?.[0]?.text ?? null,
  };
});
await step("prompts", async () => {
  const { prompts } = await client.listPrompts();
  const name = prompts.find((p) => p.name.endsWith("test_prompt_with_arguments"))?.name;
  const got = name ? await client.getPrompt({ name, arguments: { arg1: "one", arg2: "two" } }) : null;
  return { names: prompts.map((p) => p.name).sort(), text: got?.messages?.[0]?.content?.text ?? null };
});
await step("complete", async () => {
  const { completion } = await client.complete({
    ref: { type: "ref/prompt", name: "fx__test_prompt_with_arguments" },
    argument: { name: "arg1", value: "" },
  });
  return completion.values;
});
await step("subscribe", async () => {
  await client.subscribeResource({ uri: "test://watched-resource" });
  await client.callTool({ name: "fx__trigger_resource_update", arguments: {} });
  await until(() => seen.updated.length >= 1);
  const updated = [...seen.updated];
  await client.unsubscribeResource({ uri: "test://watched-resource" });
  return updated;
});
await step("toolListChanged", async () => {
  await client.callTool({ name: "fx__test_trigger_tool_change", arguments: {} });
  await until(() => seen.toolsChanged >= 1);
  return seen.toolsChanged;
});
await step("cancel", async () => {
  const abort = new AbortController();
  const call = client.callTool({ name: "fx__slow", arguments: { ms: 30000 } }, undefined, { signal: abort.signal });
  setTimeout(() => abort.abort("ts test cancels"), 300);
  let error = null;
  try {
    await call;
  } catch (e) {
    error = String(e?.message ?? e);
  }
  // The SDK sends its notifications/cancelled without waiting: wait until
  // the gateway has counted the upstream call cancelled, so the DELETE
  // below does not overtake it.
  const metrics = new URL("/metrics", url);
  const counted = async () => {
    const text = await (await fetch(metrics)).text();
    return /^mcp_client_operation_duration_seconds_count\{[^}]*outcome="cancelled"[^}]*\} [1-9]/m.test(text);
  };
  return { cancelled: error !== null, error, counted: await until(counted) };
});
await step("ping", async () => client.ping());
report.sessionId = transport.sessionId ?? null;
await step("terminate", async () => {
  await transport.terminateSession();
  return transport.sessionId ?? null;
});
report.seen = seen;
await client.close();
console.log(JSON.stringify(report));
