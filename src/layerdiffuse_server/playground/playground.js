// The playground speaks the same queue API as fal's clients: submit, follow the status stream
// (SSE, read with fetch so the Authorization header can be sent), fetch the result.

const APP_ID = document.body.dataset.appId;
const HTTPS_PORT = document.body.dataset.httpsPort;
const KEY_STORAGE = "layerdiffuse.apiKey";
const FIELDS = ["prompt", "negative_prompt", "guidance_scale", "num_inference_steps", "seed", "scheduler",
  "width", "height", "enable_safety_checker"];
const STEP_LINE = /^Denoising step (\d+)\/(\d+)/;

const $ = (id) => document.getElementById(id);
let apiKey = localStorage.getItem(KEY_STORAGE) || "";
let running = null; // the request being followed: {id, statusUrl, responseUrl, cancelUrl, controller}
let shown = null; // the image on the stage: {url, fileName}
let codeLanguage = "python";

class ApiError extends Error {
  constructor(status, body) {
    super(describe(status, body));
    this.status = status;
    this.body = body;
  }
}

function describe(status, body) {
  const detail = body && typeof body === "object" ? body.detail : body;
  if (status === 401) return "The server refused this API key (401). Enter a valid key.";
  if (status === 499 || (body && body.error_type === "client_cancelled")) return "Cancelled.";
  if (status === 422 && Array.isArray(detail)) {
    return "Invalid input:\n" + detail.map((item) => `${(item.loc || []).slice(1).join(".") || "input"}: ${item.msg}`).join("\n");
  }
  if (status === 429) return `The queue is full; try again in a moment. (${detail})`;
  if (typeof detail === "string") return `${detail} (${status})`;
  return `The server answered ${status}.`;
}

async function readBody(response) {
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return text;
  }
}

async function api(url, { method = "GET", body, signal } = {}) {
  const headers = { Authorization: `Key ${apiKey}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  const payload = await readBody(response);
  if (!response.ok) throw new ApiError(response.status, payload);
  return payload;
}

// -- the API key -----------------------------------------------------------------------------

function showKeyPanel(message) {
  $("key-panel").hidden = false;
  $("change-key").hidden = true;
  $("key-error").hidden = !message;
  $("key-error").textContent = message || "";
  $("api-key").value = apiKey;
  $("api-key").setAttribute("aria-invalid", message ? "true" : "false");
  $("api-key").focus();
}

async function saveKey(event) {
  event.preventDefault();
  apiKey = $("api-key").value.trim();
  try {
    await loadGallery();
  } catch (error) {
    showKeyPanel(error.message);
    return;
  }
  localStorage.setItem(KEY_STORAGE, apiKey);
  $("key-panel").hidden = true;
  $("change-key").hidden = false;
  $("prompt").focus();
}

// -- the form ------------------------------------------------------------------------------

function defaultOf(element) {
  if (element.type === "checkbox") return element.defaultChecked;
  if (element.tagName === "SELECT") {
    const selected = [...element.options].find((option) => option.defaultSelected) || element.options[0];
    return selected ? selected.value : "";
  }
  return element.defaultValue;
}

function valueOf(element) {
  if (element.type === "checkbox") return element.checked;
  if (element.type === "number") return element.value === "" ? null : Number(element.value);
  return element.value;
}

/** The request's input: the prompt always, every other field only where it differs from its default. */
function readInput() {
  const input = {};
  for (const name of FIELDS) {
    const element = $(name);
    const value = valueOf(element);
    if (value === null) continue;
    const unchanged = element.type === "checkbox" ? value === defaultOf(element) : String(element.value) === String(defaultOf(element));
    if (name === "prompt" || !unchanged) input[name] = value;
  }
  return input;
}

function fillForm(input) {
  for (const name of FIELDS) {
    const element = $(name);
    const value = name in input ? input[name] : defaultOf(element);
    if (element.type === "checkbox") element.checked = Boolean(value);
    else element.value = value ?? "";
  }
  updateCode();
}

/** Bounds, defaults and sampler names come from the server's own schema, so the form never drifts from it. */
async function applySchema() {
  const response = await fetch("/openapi.json");
  if (!response.ok) return;
  const schema = (await response.json()).components?.schemas?.LayerDiffusionInput?.properties || {};
  for (const [name, property] of Object.entries(schema)) {
    const element = $(name);
    if (!element) continue;
    const options = property.enum || (property.anyOf || []).flatMap((part) => part.enum || []);
    if (element.tagName === "SELECT") {
      element.replaceChildren(...options.map((option) => new Option(option, option)));
    }
    if (property.default !== undefined && property.default !== null) {
      if (element.type === "checkbox") element.defaultChecked = element.checked = property.default;
      else if (element.tagName === "SELECT") {
        element.value = property.default;
        [...element.options].forEach((option) => (option.defaultSelected = option.value === property.default));
      } else element.defaultValue = element.value = property.default;
    }
    if (property.minimum !== undefined) element.min = property.minimum;
    if (property.maximum !== undefined) element.max = property.maximum;
    if (property.description) element.title = property.description;
  }
  updateCode();
}

function clearErrors() {
  $("form-error").hidden = true;
  for (const name of FIELDS) $(name).removeAttribute("aria-invalid");
}

function showError(error) {
  if (error.name === "AbortError") return;
  const message = error instanceof ApiError ? error.message : `Could not reach the server: ${error.message}`;
  if (error.status === 401) {
    showKeyPanel(message);
  }
  const detail = error.body && Array.isArray(error.body.detail) ? error.body.detail : [];
  for (const item of detail) {
    const element = $(String((item.loc || [])[1]));
    if (!element) continue;
    element.setAttribute("aria-invalid", "true");
    const folded = element.closest("details");
    if (folded) folded.open = true;
  }
  const cancelled = error.status === 499;
  setStatus(cancelled ? "Cancelled." : "Failed.");
  $("form-error").textContent = message;
  $("form-error").hidden = cancelled;
  $("progress").hidden = true;
}

// -- running a request ---------------------------------------------------------------------

function setStatus(text) {
  $("status").textContent = text;
}

function setRunning(isRunning) {
  $("generate").disabled = isRunning;
  $("cancel").hidden = !isRunning;
  $("progress").hidden = !isRunning;
}

function addLogs(logs) {
  const list = $("logs");
  for (const entry of logs || []) {
    const item = document.createElement("li");
    item.className = entry.level;
    item.textContent = entry.message;
    list.append(item);
    const step = STEP_LINE.exec(entry.message);
    if (step) {
      $("progress").max = Number(step[2]);
      $("progress").value = Number(step[1]);
      setStatus(`Denoising step ${step[1]} of ${step[2]}`);
    } else if (entry.message.startsWith("Decoding")) {
      setStatus("Decoding the transparent image…");
    }
  }
  list.scrollTop = list.scrollHeight;
}

function onStatus(status) {
  if (status.status === "IN_QUEUE") {
    const position = status.queue_position ?? 0;
    setStatus(position > 0 ? `In queue: ${position} ahead of this request` : "In queue: next to run");
  } else if (status.status === "IN_PROGRESS" && !$("progress").value) {
    setStatus("Running…");
  }
  addLogs(status.logs);
}

async function followStream(request) {
  const response = await fetch(`${request.statusUrl}/stream?logs=1`, {
    headers: { Authorization: `Key ${apiKey}`, Accept: "text/event-stream" },
    signal: request.controller.signal,
  });
  if (!response.ok) throw new ApiError(response.status, await readBody(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart()).join("\n");
      if (!data) continue; // a keep-alive comment
      const status = JSON.parse(data);
      onStatus(status);
      if (status.status === "COMPLETED") {
        reader.cancel();
        return true;
      }
    }
  }
}

async function follow(submitted, input) {
  running = {
    id: submitted.request_id,
    statusUrl: submitted.status_url,
    responseUrl: submitted.response_url,
    cancelUrl: submitted.cancel_url,
    controller: new AbortController(),
  };
  $("logs").replaceChildren();
  $("progress").value = 0;
  setRunning(true);
  try {
    // A stream can end early (a proxy's idle timeout): then poll until the request completes.
    while (!(await followStream(running))) {
      const status = await api(`${running.statusUrl}?logs=0`, { signal: running.controller.signal });
      if (status.status === "COMPLETED") break;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    const output = await api(running.responseUrl, { signal: running.controller.signal });
    showOutput(output, input, running.id);
    setStatus(`Done: seed ${output.seed}.`);
  } finally {
    setRunning(false);
    running = null;
  }
}

async function generate(event) {
  event.preventDefault();
  clearErrors();
  if (!apiKey) {
    showKeyPanel("Enter an API key first.");
    return;
  }
  const input = readInput();
  setStatus("Submitting…");
  try {
    const submitted = await api(`/queue/${APP_ID}`, { method: "POST", body: input });
    await follow(submitted, input);
  } catch (error) {
    showError(error);
  } finally {
    loadGallery().catch(() => {});
  }
}

async function cancel() {
  if (!running) return;
  $("cancel").disabled = true;
  try {
    await api(running.cancelUrl, { method: "PUT" });
    setStatus("Cancelling…");
  } catch (error) {
    if (error.status !== 400) showError(error); // 400: it completed first
  } finally {
    $("cancel").disabled = false;
  }
}

// -- the result ----------------------------------------------------------------------------

function showOutput(output, input, requestId) {
  const { image } = output;
  const element = $("result-image");
  element.crossOrigin = "anonymous"; // the matte reads pixels back, also when files come from another origin
  element.src = image.url;
  element.alt = input.prompt ? `Generated image: ${input.prompt}` : "Generated image";
  element.width = image.width;
  element.height = image.height;
  shown = { url: image.url, fileName: image.file_name, requestId };
  $("result-caption").textContent = `${image.width}×${image.height} · seed ${output.seed} · ${(image.file_size / 1024).toFixed(0)} KB`;
  $("view-controls").disabled = false;
  $("show-matte").checked = false;
  showView();
  if (output.has_nsfw_concepts && output.has_nsfw_concepts[0]) {
    setStatus("The safety checker flagged this image, so it was made fully transparent.");
  }
}

function applyBackground() {
  const stage = $("stage");
  const choice = document.querySelector("input[name=background]:checked").value;
  stage.classList.remove("bg-checker", "bg-white", "bg-black");
  stage.style.background = "";
  if (choice === "colour") stage.style.background = $("background-colour").value;
  else stage.classList.add(`bg-${choice}`);
}

async function showView() {
  const image = $("result-image");
  const canvas = $("matte");
  const matte = $("show-matte").checked;
  image.hidden = matte || !shown;
  canvas.hidden = !matte;
  if (!matte) return;
  if (!image.complete) await image.decode();
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    data[i] = data[i + 1] = data[i + 2] = data[i + 3];
    data[i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
}

async function download() {
  if (!shown) return;
  const blob = await (await fetch(shown.url)).blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = shown.fileName || "image.png";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// -- the gallery ---------------------------------------------------------------------------

async function loadGallery() {
  const { requests } = await api("/api/requests?limit=24");
  const gallery = $("gallery");
  gallery.replaceChildren(...requests.map(galleryItem));
  $("gallery-empty").hidden = requests.length > 0;
}

function galleryItem(request) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  const prompt = request.input.prompt || "(no prompt)";
  const thumb = document.createElement("span");
  thumb.className = "thumb";
  if (request.output) {
    const image = document.createElement("img");
    image.src = request.output.image.url;
    image.alt = "";
    image.loading = "lazy";
    thumb.append(image);
  } else {
    const note = document.createElement("span");
    note.className = "state";
    note.textContent = request.status === "COMPLETED" ? describe(request.status_code, { detail: request.error }) : request.status.replace("_", " ").toLowerCase();
    thumb.append(note);
  }
  const caption = document.createElement("span");
  caption.className = "caption";
  caption.textContent = prompt;
  button.append(thumb, caption);
  const state = { IN_QUEUE: "queued", IN_PROGRESS: "running" }[request.status] || (request.status_code === 499 ? "cancelled" : "failed");
  button.setAttribute("aria-label", `${prompt}: ${request.output ? "show image" : state}`);
  button.addEventListener("click", () => openRequest(request));
  item.append(button);
  return item;
}

function openRequest(request) {
  clearErrors();
  fillForm(request.input);
  if (request.output) {
    showOutput(request.output, request.input, request.request_id);
    setStatus(`Request ${request.request_id}`);
  } else if (request.status !== "COMPLETED" && !running) {
    follow(request, request.input).catch(showError);
  } else if (request.status === "COMPLETED") {
    showError(new ApiError(request.status_code, { detail: request.error }));
  }
}

// -- copy as code --------------------------------------------------------------------------

function pythonLiteral(value) {
  if (value === true) return "True";
  if (value === false) return "False";
  if (value === null) return "None";
  if (typeof value === "object") {
    return `{${Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${pythonLiteral(item)}`).join(", ")}}`;
  }
  return JSON.stringify(value);
}

function codeFor(language, input) {
  const origin = window.location.origin;
  if (language === "python") {
    const host = `${window.location.hostname}:${HTTPS_PORT}`;
    const setup = HTTPS_PORT
      ? `# export FAL_KEY=<your key> FAL_RUN_HOST=${host}/run FAL_QUEUE_RUN_HOST=${host}/queue\n` +
        "# export SSL_CERT_FILE=<data dir>/tls/ca.pem   # the local CA, as `layerdiffuse serve` printed\n"
      : "# fal_client needs the server's https listener (start it without --tls-port 0)\n";
    return `# pip install fal-client\n${setup}import fal_client\n\nresult = fal_client.subscribe(\n    "${APP_ID}",\n` +
      `    arguments=${pythonLiteral(input)},\n    with_logs=True,\n)\nprint(result["seed"], result["image"]["url"])\n`;
  }
  if (language === "javascript") {
    return `// npm install @fal-ai/client\nimport { fal } from "@fal-ai/client";\n\nfal.config({\n  credentials: process.env.FAL_KEY,\n` +
      `  proxyUrl: { url: "${origin}/api/fal/proxy", when: "always" },\n});\n` +
      `const { data } = await fal.subscribe("${APP_ID}", {\n  input: ${JSON.stringify(input)},\n  logs: true,\n});\n` +
      "console.log(data.seed, data.image.url);\n";
  }
  const body = JSON.stringify(input).replaceAll("'", "'\\''");
  return `curl -X POST ${origin}/run/${APP_ID} \\\n  -H "Authorization: Key $FAL_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d '${body}'\n`;
}

function updateCode() {
  $("code-text").textContent = codeFor(codeLanguage, readInput());
}

function selectTab(tab) {
  for (const other of document.querySelectorAll("[role=tab]")) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
  }
  codeLanguage = tab.dataset.language;
  $("code-text").setAttribute("aria-labelledby", tab.id);
  updateCode();
}

function onTabKey(event) {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  const index = tabs.indexOf(event.target);
  const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  const tab = tabs[(next + tabs.length) % tabs.length];
  tab.focus();
  selectTab(tab);
}

async function copyCode() {
  try {
    await navigator.clipboard.writeText($("code-text").textContent);
    $("copy-status").textContent = "Copied.";
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("code-text"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    $("copy-status").textContent = "Selected: press Ctrl+C to copy.";
  }
}

// -- start ---------------------------------------------------------------------------------

$("key-form").addEventListener("submit", saveKey);
$("change-key").addEventListener("click", () => showKeyPanel());
$("generate-form").addEventListener("submit", generate);
$("generate-form").addEventListener("input", updateCode);
$("cancel").addEventListener("click", cancel);
$("download").addEventListener("click", () => download().catch(showError));
$("show-matte").addEventListener("change", () => showView().catch(showError));
for (const radio of document.querySelectorAll("input[name=background]")) radio.addEventListener("change", applyBackground);
$("background-colour").addEventListener("input", () => {
  document.querySelector("input[name=background][value=colour]").checked = true;
  applyBackground();
});
$("refresh-gallery").addEventListener("click", () => loadGallery().catch(showError));
for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", onTabKey);
}
$("copy-code").addEventListener("click", copyCode);

applySchema().catch(() => {});
updateCode();
if (apiKey) {
  $("change-key").hidden = false;
  loadGallery().catch(showError);
} else {
  showKeyPanel();
}
