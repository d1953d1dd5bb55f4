// Drives the server with the unmodified @fal-ai/client; prints one JSON line with what happened.
import { createFalClient, ApiError, ValidationError } from "@fal-ai/client";

const [scenario, proxyUrl, key, argJson] = process.argv.slice(2);
const args = argJson ? JSON.parse(argJson) : {};
const fal = createFalClient({
  credentials: key,
  proxyUrl: { url: proxyUrl, when: "always" },
  retry: { maxRetries: 0 },
});
const APP = "fal-ai/layer-diffusion";

function describeError(error) {
  if (error instanceof ValidationError) return { kind: "ValidationError", status: error.status, fieldErrors: error.fieldErrors };
  if (error instanceof ApiError) return { kind: "ApiError", status: error.status, body: error.body };
  return { kind: error?.constructor?.name ?? "Error", message: String(error) };
}

const scenarios = {
  async run() {
    const { data, requestId } = await fal.run(APP, { input: args.input });
    return { data, requestId };
  },
  async streaming() {
    const updates = [];
    const { data, requestId } = await fal.subscribe(APP, {
      input: args.input,
      mode: "streaming",
      logs: true,
      onQueueUpdate: (update) => updates.push({ status: update.status, logs: (update.logs ?? []).map((l) => l.message) }),
    });
    return { data, requestId, updates };
  },
  async polling() {
    const statuses = [];
    const { data, requestId } = await fal.subscribe(APP, {
      input: args.input,
      logs: true,
      pollInterval: 100,
      onQueueUpdate: (update) => statuses.push(update.status),
    });
    return { data, requestId, statuses };
  },
  async submit() {
    const submitted = await fal.queue.submit(APP, { input: args.input, webhookUrl: args.webhookUrl, priority: args.priority });
    return { submitted };
  },
  async status() {
    return { status: await fal.queue.status(APP, { requestId: args.requestId, logs: true }) };
  },
  async result() {
    return await fal.queue.result(APP, { requestId: args.requestId });
  },
  async cancel() {
    await fal.queue.cancel(APP, { requestId: args.requestId });
    return { cancelled: true };
  },
  async upload() {
    const bytes = Uint8Array.from(Buffer.from(args.base64, "base64"));
    const url = await fal.storage.upload(new Blob([bytes], { type: args.contentType }));
    const response = await fetch(url);
    return { url, status: response.status, contentType: response.headers.get("content-type"), size: (await response.arrayBuffer()).byteLength };
  },
  async uploadTextFile() {
    // fal's own documentation example: any file goes.
    const url = await fal.storage.upload(new File(["Hello, World!"], "hello.txt", { type: "text/plain" }));
    const response = await fetch(url);
    return { url, status: response.status, text: await response.text(), headers: Object.fromEntries(response.headers) };
  },
  async uploadLora() {
    // A LoRA file as a browser holds one (a File from an <input>), uploaded before its URL goes in `loras`.
    const bytes = Uint8Array.from(Buffer.from(args.base64, "base64"));
    const url = await fal.storage.upload(new File([bytes], args.fileName, { type: "application/octet-stream" }));
    return { url };
  },
  async layer() {
    // Image inputs as Blobs: the client uploads them itself and sends the URLs.
    const images = Object.fromEntries(
      Object.entries(args.files).map(([name, base64]) => [
        name,
        new Blob([Uint8Array.from(Buffer.from(base64, "base64"))], { type: "image/png" }),
      ]),
    );
    const { data, requestId } = await fal.subscribe(`${APP}/${args.path}`, { input: { ...args.input, ...images }, logs: true });
    return { data, requestId };
  },
  async autoUpload() {
    const bytes = Uint8Array.from(Buffer.from(args.base64, "base64"));
    return { transformed: await fal.storage.transformInput({ image: new Blob([bytes], { type: "image/png" }), prompt: "x" }) };
  },
};

try {
  const outcome = await scenarios[scenario]();
  console.log(JSON.stringify({ ok: true, ...outcome }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: describeError(error) }));
}
