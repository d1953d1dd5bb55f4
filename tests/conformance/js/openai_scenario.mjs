// Drives the server's /v1 routes with the unmodified `openai` npm package:
// node openai_scenario.mjs <scenario> <base URL of /v1> <key> <JSON args>; prints one JSON line.
import OpenAI, { toFile } from "openai";

const [scenario, baseURL, apiKey, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

const scenarios = {
  async generate() {
    const result = await client.images.generate(args.params);
    return { result };
  },
  async edit() {
    const image = await toFile(Buffer.from(args.base64, "base64"), "layer.png", { type: "image/png" });
    const result = await client.images.edit({ image, ...args.params });
    return { result };
  },
  async stream() {
    const events = [];
    for await (const event of await client.images.generate({ ...args.params, stream: true })) events.push(event);
    return { events };
  },
};

try {
  console.log(JSON.stringify({ ok: true, ...(await scenarios[scenario]()) }));
} catch (error) {
  const name = Object.entries(OpenAI).find(([, value]) => typeof value === "function" && error.constructor === value)?.[0];
  console.log(JSON.stringify({ ok: false, error: { name: name ?? error.constructor.name, status: error.status, param: error.param ?? null, message: error.message } }));
}
