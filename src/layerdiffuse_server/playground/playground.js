// The playground speaks the same queue API as fal's clients: submit, follow the status stream
// (SSE, read with fetch so the Authorization header can be sent), fetch the result.

const APP_ID = document.body.dataset.appId;
const HTTPS_PORT = document.body.dataset.httpsPort;
const KEY_STORAGE = "layerdiffuse.apiKey";
// The form's values and the id of the request last shown: never the key, which keeps its own entry.
const FORM_STORAGE = "layerdiffuse.form";
const LAST_STORAGE = "layerdiffuse.lastRequest";
const FIELDS = ["prompt", "negative_prompt", "guidance_scale", "num_inference_steps", "seed", "num_images",
  "scheduler", "model_name", "width", "height", "enable_safety_checker"];
const NUMBER_FIELDS = ["guidance_scale", "num_inference_steps", "seed", "num_images", "width", "height"];
// The app's endpoints (endpoints.py): the sub-path, the schema of its input, its image fields, its
// own number fields, and whether its result is a transparent layer (else an opaque image).
const ENDPOINTS = [
  { path: "", title: "Text to transparent image", model: "LayerDiffusionInput", images: [], extras: [], transparent: true },
  { path: "image-to-image", title: "Transparent image to transparent image", model: "ImageToImageInput",
    images: ["image_url"], extras: ["strength"], transparent: true },
  { path: "inpainting", title: "Transparent inpainting: the masked area regenerated", model: "InpaintingInput",
    images: ["image_url", "mask_url"], extras: ["strength"], transparent: true },
  { path: "foreground-to-blended", title: "Foreground to blended image", model: "ForegroundToBlendedInput",
    images: ["foreground_image_url"], extras: ["stop_at"], transparent: false },
  { path: "background-to-blended", title: "Background to blended image", model: "BackgroundToBlendedInput",
    images: ["background_image_url"], extras: ["stop_at"], transparent: false },
  { path: "foreground-blended-to-background", title: "Foreground and blended image to background",
    model: "ForegroundBlendedToBackgroundInput", images: ["foreground_image_url", "blended_image_url"], extras: ["stop_at"],
    transparent: false },
  { path: "background-blended-to-foreground", title: "Background and blended image to transparent foreground",
    model: "BackgroundBlendedToForegroundInput", images: ["background_image_url", "blended_image_url"], extras: ["stop_at"],
    transparent: true },
].map((endpoint) => ({ ...endpoint, id: endpoint.path ? `${APP_ID}/${endpoint.path}` : APP_ID }));
// Each image field: its label, and the file name the code snippets read it from when no URL is given.
const IMAGE_FIELDS = {
  image_url: { label: "Image", file: "input.png" },
  foreground_image_url: { label: "Foreground image", file: "foreground.png" },
  background_image_url: { label: "Background image", file: "background.png" },
  blended_image_url: { label: "Blended image", file: "blended.png" },
  mask_url: { label: "Mask (alpha 0: regenerate)", file: "mask.png" },
};
const EXTRA_FIELDS = ["strength", "stop_at"];
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"]; // what the server's storage accepts
const EMPTY_PREVIEW = "Drop a PNG, JPEG or WebP image here, choose a file, or paste its URL below.";
const STEP_LINE = /^Denoising step (\d+)\/(\d+)/;
const GALLERY_LIMIT = 24;
const MIN_DISPLAY = 256; // CSS pixels: smaller images are shown scaled up by a whole factor, pixels crisp

const $ = (id) => document.getElementById(id);
let apiKey = localStorage.getItem(KEY_STORAGE) || "";
// The request being followed: {request, controller, logs, step: [n, total] | null, statusText}.
let running = null;
let displayed = null; // the id of the request the result panel shows
let displays = 0; // how many times the result panel changed request (late answers for an old one are dropped)
let shown = null; // the image on the stage: {url, fileName, requestId}
let gallery = []; // request summaries, newest first, as /api/requests lists them
let codeLanguage = "python";
let formTouched = false;
let endpoint = ENDPOINTS[0]; // the one the form is for
let inputSchemas = {}; // the input models of /openapi.json, by name
// What the server says about itself (/api/info): its model and vocabulary, inline limit, CA file.
let serverInfo = null;
// Per image field, the file chosen for it: {file, preview (an object URL), uploaded (its URL here, once sent)}.
const chosen = {};
// Origins previews may load from: the page's policy allows its own and the file URLs' (never other sites').
const fileOrigins = new Set([window.location.origin]);

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

function remember(name, value) {
  try {
    if (value === null) localStorage.removeItem(name);
    else localStorage.setItem(name, JSON.stringify(value));
  } catch {
    // storage full or disabled: the page works without it
  }
}

function recall(name) {
  try {
    return JSON.parse(localStorage.getItem(name) || "null");
  } catch {
    return null;
  }
}

/** The request's URLs on this server, from its id alone (stored ids never pick where the key is sent). */
function urlsOf(requestId) {
  const root = `${window.location.origin}/queue/${APP_ID}/requests/${encodeURIComponent(requestId)}`;
  return { response_url: root, status_url: `${root}/status`, cancel_url: `${root}/cancel` };
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
  restoreLast().catch(() => {});
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

/** The fields of an endpoint's input, in the order requests and snippets list them: images first. */
function fieldsOf(target) {
  return [...target.images, ...FIELDS, ...target.extras];
}

/** The LoRA lines as the request's ``loras``: ``PATH[:SCALE]`` each, the scale what follows the last colon
 * when it is a number (URLs have colons too). */
function lorasOf(text) {
  return text.split("\n").map((line) => line.trim()).filter(Boolean).map((line) => {
    const colon = line.lastIndexOf(":");
    const scale = colon > 0 ? line.slice(colon + 1).trim() : "";
    return scale !== "" && !Number.isNaN(Number(scale))
      ? { path: line.slice(0, colon).trim(), scale: Number(scale) }
      : { path: line, scale: 1 };
  });
}

function linesOf(loras) {
  return Array.isArray(loras)
    ? loras.filter(isObject).map((lora) => (lora.scale === undefined || lora.scale === 1 ? lora.path : `${lora.path}:${lora.scale}`)).join("\n")
    : "";
}

/** The request's input: the prompt and the images always, every other field only where it differs from
 * its default. An image is its URL, typed or (once uploaded) that of the file chosen for it. */
function readInput() {
  const input = {};
  for (const name of endpoint.images) {
    const url = $(name).value.trim() || (chosen[name] && chosen[name].uploaded);
    if (url) input[name] = url;
  }
  for (const name of [...FIELDS, ...endpoint.extras]) {
    const element = $(name);
    const value = valueOf(element);
    if (value === null) continue;
    const unchanged = element.type === "checkbox" ? value === defaultOf(element) : String(element.value) === String(defaultOf(element));
    if (name === "prompt" || !unchanged) input[name] = value;
  }
  const loras = lorasOf($("loras").value);
  if (loras.length) input.loras = loras;
  return input;
}

function fillForm(input) {
  for (const name of endpoint.images) setImageUrl(name, typeof input[name] === "string" ? input[name] : "");
  for (const name of [...FIELDS, ...endpoint.extras]) {
    const element = $(name);
    const value = name in input ? input[name] : defaultOf(element);
    if (element.type === "checkbox") element.checked = Boolean(value);
    else element.value = value ?? "";
    if (element.tagName === "SELECT" && element.selectedIndex < 0) element.value = defaultOf(element);
  }
  $("loras").value = linesOf(input.loras);
  updateCode();
}

function saveForm() {
  remember(FORM_STORAGE, { endpoint: endpoint.path, input: readInput() });
}

function restoreForm() {
  if (formTouched) return; // typed into while the page was starting: that wins
  const saved = recall(FORM_STORAGE);
  if (!isObject(saved)) return;
  // Pages before the endpoint chooser kept the input alone.
  const input = isObject(saved.input) ? saved.input : saved;
  selectEndpoint(ENDPOINTS.find((other) => other.path === saved.endpoint) || endpointOf(input));
  fillForm(input);
}

function isObject(value) {
  return Boolean(value) && typeof value === "object" && !Array.isArray(value);
}

/** The endpoint an input was sent to, from its image fields (each endpoint has its own set of them). */
function endpointOf(input) {
  const images = Object.keys(IMAGE_FIELDS).filter((name) => name in input);
  return ENDPOINTS.find((other) => other.images.length === images.length && images.every((name) => other.images.includes(name))) ||
    ENDPOINTS.find((other) => images.length && images.every((name) => other.images.includes(name))) ||
    ENDPOINTS[0];
}

/** The endpoint a listed request was sent to (as the server reports it; else from its input). */
function endpointOfRequest(request) {
  return ENDPOINTS.find((other) => other.id === request.endpoint_id) || endpointOf(request.input || {});
}

/** Shows the fields of an endpoint (its images, strength or stop_at), with the bounds and defaults of its schema. */
function selectEndpoint(target) {
  endpoint = target;
  $("endpoint").value = target.path;
  $("endpoint-id").textContent = target.id;
  $("endpoint-result").textContent = target.transparent ? "a transparent image" : "an opaque image";
  for (const name of Object.keys(IMAGE_FIELDS)) $(`${name}-field`).hidden = !target.images.includes(name);
  for (const name of EXTRA_FIELDS) $(`${name}-field`).hidden = !target.extras.includes(name);
  const size = !target.images.length ? "model's own" : target.extras.includes("strength") ? "input's size" : "first image's size";
  for (const name of ["width", "height"]) $(name).placeholder = size;
  applySchema(target);
  updateCode();
}

/** The input schemas of the server's OpenAPI document, so the form never drifts from them. */
/** The model that runs, a prompt it draws (the placeholder) and, for a closed vocabulary, the words it knows. */
async function loadInfo() {
  const response = await fetch("/api/info");
  if (!response.ok) return;
  serverInfo = await response.json();
  const { model } = serverInfo;
  $("prompt").placeholder = model.example_prompt;
  $("model-name").textContent = model.name;
  $("model-line").hidden = false;
  $("model_name-field").hidden = !(serverInfo.checkpoints || []).length; // the choices come from the schema
  if (model.vocabulary) {
    const groups = Object.entries(model.vocabulary).map(([group, words]) => `${group}: ${words.join(", ")}`);
    $("vocabulary").textContent = `The ${model.name} model knows only these words: ${groups.join("; ")}. ` +
      "It ignores any other word (the result's log names them).";
    $("vocabulary").hidden = false;
  }
  updateCode();
}

function mebibytes(bytes) {
  return `${Number((bytes / 2 ** 20).toFixed(1))} MiB`;
}

async function loadSchemas() {
  const response = await fetch("/openapi.json");
  if (!response.ok) return;
  inputSchemas = (await response.json()).components?.schemas || {};
  applySchema(endpoint);
  updateCode();
}

/** Bounds, defaults and sampler names of an endpoint's fields, from its schema. A field still at its
 * default follows the new one (the conditioned endpoints' sampler); a value the user chose stays. */
function applySchema(target) {
  const schema = inputSchemas[target.model]?.properties || {};
  for (const [name, property] of Object.entries(schema)) {
    const element = $(name);
    if (!element) continue;
    const options = property.enum || (property.anyOf || []).flatMap((part) => part.enum || []);
    const previous = element.tagName === "SELECT" ? element.value : null;
    const unedited = element.type === "checkbox"
      ? element.checked === element.defaultChecked
      : element.tagName === "SELECT"
        ? previous === defaultOf(element) || !options.includes(previous)
        : element.value === element.defaultValue;
    if (element.tagName === "SELECT") {
      // A nullable choice (the checkpoint) starts with its absence: "" is sent as no field at all.
      const absent = (property.anyOf || []).some((part) => part.type === "null")
        ? [new Option(element.dataset.nullLabel || "default", "")]
        : [];
      element.replaceChildren(...absent, ...options.map((option) => new Option(option, option)));
      if (options.includes(previous)) element.value = previous;
    }
    if (property.default !== undefined && property.default !== null) {
      if (element.type === "checkbox") {
        element.defaultChecked = property.default;
        if (unedited) element.checked = property.default;
      } else if (element.tagName === "SELECT") {
        [...element.options].forEach((option) => (option.defaultSelected = option.value === property.default));
        if (unedited) element.value = property.default;
      } else {
        element.defaultValue = property.default;
        if (unedited) element.value = property.default;
      }
    }
    // A nullable number (the seed) keeps its bounds in the anyOf part that is a number.
    const number = ["integer", "number"].includes(property.type)
      ? property
      : (property.anyOf || []).find((part) => ["integer", "number"].includes(part.type));
    if (number && element.type === "number") {
      if (number.minimum !== undefined) element.min = number.minimum;
      if (number.exclusiveMinimum !== undefined) {
        element.min = number.exclusiveMinimum;
        element.dataset.exclusiveMinimum = "";
      } else if (number.minimum !== undefined) delete element.dataset.exclusiveMinimum;
      if (number.maximum !== undefined) element.max = number.maximum;
      if (number.multipleOf !== undefined) {
        element.dataset.multipleOf = number.multipleOf;
        element.step = number.multipleOf;
      }
      if (number.type === "integer") element.dataset.integer = "";
      else delete element.dataset.integer;
    }
    if (property.description) {
      element.title = property.description;
      if (name in IMAGE_FIELDS) $(`${name}-file`).title = property.description;
    }
  }
}

function labelOf(element) {
  return (element.labels && element.labels[0] ? element.labels[0].textContent : element.name).trim();
}

/** What is wrong with a number field under the schema's bounds, or null. Empty means "the default". */
function problemOf(element) {
  if (element.type !== "number") return null;
  const name = labelOf(element);
  if (element.validity.badInput) return `${name}: enter a number.`;
  if (element.value.trim() === "") return null;
  const value = Number(element.value);
  if (!Number.isFinite(value)) return `${name}: enter a number.`;
  const min = element.min === "" ? undefined : Number(element.min);
  const max = element.max === "" ? undefined : Number(element.max);
  const step = element.dataset.multipleOf ? Number(element.dataset.multipleOf) : undefined;
  if ("integer" in element.dataset && !Number.isInteger(value)) return `${name} must be a whole number.`;
  if (min !== undefined && "exclusiveMinimum" in element.dataset && value <= min) {
    return `${name} must be more than ${min} (not ${element.value}).`;
  }
  if (min !== undefined && value < min) return `${name} must be at least ${min} (not ${element.value}).`;
  if (max !== undefined && value > max) return `${name} must be at most ${max} (not ${element.value}).`;
  if (step && Math.abs(value / step - Math.round(value / step)) > 1e-9) {
    let nearest = Math.round(value / step) * step;
    if (min !== undefined) nearest = Math.max(nearest, Math.ceil(min / step) * step);
    if (max !== undefined) nearest = Math.min(nearest, Math.floor(max / step) * step);
    return `${name} must be a multiple of ${step}, for example ${nearest} (not ${element.value}).`;
  }
  return null;
}

function markInvalid(element) {
  element.setAttribute("aria-invalid", "true");
  element.setAttribute("aria-describedby", "form-error");
  const folded = element.closest("details");
  if (folded) folded.open = true;
}

function unmark(element) {
  element.removeAttribute("aria-invalid");
  element.removeAttribute("aria-describedby");
}

/** Checks the images and every number field before anything is sent; marks the wrong ones and says why. */
function validateForm() {
  const problems = [];
  let first = null;
  for (const name of endpoint.images) {
    if ($(name).value.trim() || chosen[name]) continue;
    problems.push(`${IMAGE_FIELDS[name].label}: choose or drop a file, or paste its URL.`);
    markInvalid($(`${name}-file`));
    markInvalid($(name));
    first = first || $(`${name}-file`);
  }
  for (const name of [...NUMBER_FIELDS, ...endpoint.extras]) {
    const element = $(name);
    const problem = problemOf(element);
    if (!problem) continue;
    problems.push(problem);
    markInvalid(element);
    first = first || element;
  }
  if (!problems.length) return true;
  $("form-error").textContent = `Not sent. Please correct ${problems.length > 1 ? "these fields" : "this field"}:\n${problems.join("\n")}`;
  $("form-error").hidden = false;
  first.focus();
  return false;
}

/** A field marked invalid loses its mark once edited into a valid value (an image once it has one). */
function recheck(event) {
  const element = event.target;
  if (element.id in IMAGE_FIELDS) {
    if (element.value.trim()) unmarkImage(element.id); // its file picker's mark too
    return;
  }
  if (!fieldsOf(endpoint).includes(element.id) || element.getAttribute("aria-invalid") !== "true") return;
  if (problemOf(element)) return;
  unmark(element);
  hideFixedError();
}

function unmarkImage(name) {
  const marked = [$(name), $(`${name}-file`)].filter((element) => element.getAttribute("aria-invalid") === "true");
  if (!marked.length) return;
  marked.forEach(unmark);
  hideFixedError();
}

/** The message goes with the last mark it explains. */
function hideFixedError() {
  if (!document.querySelector("#generate-form [aria-invalid=true]")) $("form-error").hidden = true;
}

function clearErrors() {
  $("form-error").hidden = true;
  for (const element of document.querySelectorAll("#generate-form [aria-invalid]")) unmark(element);
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
    if (element && fieldsOf(endpoint).includes(element.id)) markInvalid(element);
  }
  const cancelled = error.status === 499;
  setStatus(cancelled ? "Cancelled." : "Failed.");
  $("form-error").textContent = message;
  $("form-error").hidden = cancelled;
  $("progress").hidden = true;
}

// -- image inputs --------------------------------------------------------------------------

/** One drop zone, file picker, URL field and preview per image field, from the page's template. */
function buildImageInputs() {
  const template = $("image-input-template").content.firstElementChild;
  for (const [name, { label }] of Object.entries(IMAGE_FIELDS)) {
    const block = template.cloneNode(true);
    const part = (key) => block.querySelector(`[data-part=${key}]`);
    block.id = `${name}-field`;
    part("file-label").htmlFor = part("file").id = `${name}-file`;
    part("file-label").textContent = label;
    part("url-label").htmlFor = part("url").id = part("url").name = name;
    part("url-label").textContent = `${label} URL`;
    part("preview").id = `${name}-preview`;
    part("preview").alt = `${label}: preview`;
    part("caption").id = `${name}-caption`;
    part("caption").textContent = EMPTY_PREVIEW;
    part("file").setAttribute("aria-describedby", `${name}-caption`);
    part("file").addEventListener("change", () => {
      const file = part("file").files[0];
      if (file) chooseFile(name, file);
    });
    part("url").addEventListener("input", (event) => {
      if (chosen[name]) forgetFile(name, EMPTY_PREVIEW); // a typed URL replaces the chosen file
      if (event.inputType === "insertFromPaste" || event.inputType === "insertFromDrop") previewUrl(name);
    });
    part("url").addEventListener("change", () => previewUrl(name));
    part("preview").addEventListener("load", () => {
      const image = part("preview");
      image.hidden = false;
      part("caption").textContent = [image.dataset.about, `${image.naturalWidth}×${image.naturalHeight}`].filter(Boolean).join(" · ");
    });
    part("preview").addEventListener("error", () => {
      if (!part("preview").getAttribute("src")) return;
      part("preview").hidden = true;
      part("caption").textContent = "No preview: the browser cannot show this image.";
    });
    const zone = part("zone");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragover");
    });
    zone.addEventListener("dragleave", (event) => {
      if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragover");
    });
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      event.stopPropagation();
      zone.classList.remove("dragover");
      const { files } = event.dataTransfer;
      if (files.length) {
        part("file").files = files;
        chooseFile(name, files[0]);
        return;
      }
      // An image dragged from another page comes as its address.
      const url = (event.dataTransfer.getData("text/uri-list") || event.dataTransfer.getData("text/plain")).split(/\r?\n/)[0].trim();
      if (url) {
        setImageUrl(name, url);
        updateCode();
        saveForm();
      }
    });
    $("image-inputs").append(block);
  }
}

/** A file picked or dropped for an image field: previewed at once, uploaded when the request is sent. */
function chooseFile(name, file) {
  if (!IMAGE_TYPES.includes(file.type)) {
    $(`${name}-file`).value = "";
    markInvalid($(`${name}-file`));
    $("form-error").textContent = `${IMAGE_FIELDS[name].label}: ${file.name} is not a PNG, JPEG or WebP image.`;
    $("form-error").hidden = false;
    return;
  }
  if (chosen[name]) URL.revokeObjectURL(chosen[name].preview);
  chosen[name] = { file, preview: URL.createObjectURL(file), uploaded: null };
  $(name).value = "";
  unmarkImage(name);
  showPreview(name, chosen[name].preview, `${file.name} · ${Math.max(1, Math.round(file.size / 1024))} KB`);
  formTouched = true;
  updateCode();
  saveForm();
}

function forgetFile(name, caption) {
  const entry = chosen[name];
  if (!entry) return;
  delete chosen[name];
  URL.revokeObjectURL(entry.preview);
  $(`${name}-file`).value = "";
  if (caption !== undefined) showPreview(name, null, caption);
}

/** An image field set to a URL (a saved form, a request from the gallery, a dropped link). */
function setImageUrl(name, url) {
  forgetFile(name);
  $(name).value = url;
  previewUrl(name);
}

function showPreview(name, src, about) {
  const image = $(`${name}-preview`);
  image.hidden = true;
  image.dataset.about = about || "";
  if (src) {
    $(`${name}-caption`).textContent = "Loading the preview…";
    image.src = src;
  } else {
    image.removeAttribute("src");
    $(`${name}-caption`).textContent = about || EMPTY_PREVIEW;
  }
}

/** The URL typed into an image field, previewed where the page's policy lets it load (this server's files,
 * data: URIs); the server fetches other sites' images itself when the request runs. */
function previewUrl(name) {
  if (chosen[name]) return;
  const url = $(name).value.trim();
  if (!url) {
    showPreview(name, null, EMPTY_PREVIEW);
    return;
  }
  let origin = null;
  try {
    origin = new URL(url).origin;
  } catch {
    // not a URL: the server says what it expects
  }
  if (url.startsWith("data:image/") || fileOrigins.has(origin)) showPreview(name, url, "");
  else if (url.startsWith("data:")) showPreview(name, null, "No preview: this data: URI is not an image.");
  else showPreview(name, null, "No preview of other sites' images here: the server fetches this one when the request runs.");
}

function noteFileOrigin(url) {
  try {
    fileOrigins.add(new URL(url).origin);
  } catch {
    // not a URL
  }
}

/** Stores a chosen file on the server the way fal's JS client does (a signed, single-use PUT), so images of
 * any size allowed for uploads fit, not only what a request body takes; sent again, it is not uploaded again. */
async function upload(name) {
  const entry = chosen[name];
  if (entry.uploaded) return entry.uploaded;
  const { file } = entry;
  const { upload_url: uploadUrl, file_url: fileUrl } = await api("/rest/storage/upload/initiate", {
    method: "POST",
    body: { file_name: file.name, content_type: file.type },
  });
  const response = await fetch(uploadUrl, { method: "PUT", headers: { "Content-Type": file.type }, body: file });
  if (!response.ok) throw new ApiError(response.status, await readBody(response));
  entry.uploaded = fileUrl;
  noteFileOrigin(fileUrl);
  return fileUrl;
}

// -- running a request ---------------------------------------------------------------------

function setStatus(text) {
  $("status").textContent = text;
}

function setRunning(isRunning) {
  $("generate").disabled = isRunning;
  $("cancel").hidden = !isRunning;
}

function isShowingRunning() {
  return Boolean(running) && running.request.request_id === displayed;
}

function logItem(entry) {
  const item = document.createElement("li");
  item.className = entry.level;
  item.textContent = entry.message;
  return item;
}

function showLogs(entries) {
  const list = $("logs");
  list.append(...entries.map(logItem));
  list.scrollTop = list.scrollHeight;
}

function runningStatus(text) {
  running.statusText = text;
  if (isShowingRunning()) setStatus(text);
}

function showProgress() {
  const progress = $("progress");
  progress.hidden = false;
  progress.max = running.step ? running.step[1] : 1;
  progress.value = running.step ? running.step[0] : 0;
}

/** The followed request on the result panel: its own logs, progress and status so far. */
function renderRunning() {
  $("logs").replaceChildren();
  showLogs(running.logs);
  showProgress();
  setStatus(running.statusText);
}

function addLogs(logs) {
  for (const entry of logs || []) {
    running.logs.push(entry);
    const step = STEP_LINE.exec(entry.message);
    if (step) {
      running.step = [Number(step[1]), Number(step[2])];
      runningStatus(`Denoising step ${step[1]} of ${step[2]}`);
    } else if (entry.message.startsWith("Decoding")) {
      runningStatus("Decoding the transparent image…");
    }
  }
  if (isShowingRunning()) {
    showLogs(logs || []);
    showProgress();
  }
}

function onStatus(status) {
  const request = running.request;
  if (status.status === "IN_QUEUE") {
    const position = status.queue_position ?? 0;
    runningStatus(position > 0 ? `In queue: ${position} ahead of this request` : "In queue: next to run");
  } else if (status.status === "IN_PROGRESS" && !running.step) {
    runningStatus("Running…");
  } else if (status.status === "COMPLETED") {
    request.error = status.error ?? null;
  }
  if (status.status !== "COMPLETED" && status.status !== request.status) {
    request.status = status.status;
    updateRequest(request);
  }
  addLogs(status.logs);
}

/** "Done", and for a model with a closed vocabulary the prompt's words it did not know. */
function doneText(output) {
  const ignored = output.ignored_prompt_words || [];
  const model = serverInfo ? `The ${serverInfo.model.name} model` : "The model";
  const note = ignored.length ? ` ${model} ignored: ${ignored.join(", ")}.` : "";
  const count = (output.images || []).length;
  const seeds = count > 1 ? `${count} images, seeds ${output.seed}–${output.seed + count - 1}` : `seed ${output.seed}`;
  return `Done: ${seeds}.${note}`;
}

async function followStream(followed) {
  const response = await fetch(`${followed.request.status_url}/stream?logs=1`, {
    headers: { Authorization: `Key ${apiKey}`, Accept: "text/event-stream" },
    signal: followed.controller.signal,
  });
  if (!response.ok) throw new ApiError(response.status, await readBody(response));
  // Each stream starts with every log line so far: a stream opened again must not repeat them.
  followed.logs = [];
  if (isShowingRunning()) $("logs").replaceChildren();
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

/** Follows a request to its end, keeping its gallery tile up to date and, while shown, the result panel. */
async function follow(request) {
  const id = request.request_id;
  const initial = request.status === "IN_PROGRESS" ? "Running…" : "In queue";
  running = { request, controller: new AbortController(), logs: [], step: null, statusText: initial };
  setRunning(true);
  if (isShowingRunning()) renderRunning();
  const { signal } = running.controller;
  try {
    // A stream can end early (a proxy's idle timeout): then poll until the request completes.
    while (!(await followStream(running))) {
      const status = await api(`${request.status_url}?logs=0`, { signal });
      if (status.status === "COMPLETED") {
        request.error = status.error ?? null;
        break;
      }
      onStatus({ ...status, logs: [] }); // its tile and status line keep up while the stream is away
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    let failure = null;
    try {
      request.output = await api(request.response_url, { signal });
      request.status_code = 200;
    } catch (error) {
      // The stored outcome of the request (422, 499, 500…), unless the key or the request is gone.
      if (!(error instanceof ApiError) || [401, 404].includes(error.status)) throw error;
      failure = error;
      request.status_code = error.status;
      request.error = request.error ?? (typeof error.body?.detail === "string" ? error.body.detail : null);
    }
    request.status = "COMPLETED";
    updateRequest(request);
    // Other unfinished tiles (another tab's requests, or one from before a reload) may be done by now.
    if (gallery.some((other) => other.status !== "COMPLETED")) loadGallery().catch(() => {});
    if (displayed === id) {
      $("progress").hidden = true;
      if (failure) showError(failure);
      else {
        showOutput(request.output, request.input, id);
        setStatus(doneText(request.output));
      }
    }
  } catch (error) {
    if (displayed === id) showError(error);
  } finally {
    running = null;
    setRunning(false);
  }
}

async function generate(event) {
  event.preventDefault();
  if (running) return;
  clearErrors();
  if (!apiKey) {
    showKeyPanel("Enter an API key first.");
    return;
  }
  if (!validateForm()) return;
  const target = endpoint;
  const input = readInput();
  saveForm();
  $("generate").disabled = true;
  let submitted;
  let uploading = null;
  try {
    for (const name of target.images) {
      if (input[name]) continue;
      uploading = { name, file: chosen[name].file };
      setStatus(`Uploading ${uploading.file.name}…`);
      input[name] = await upload(name);
    }
    uploading = null;
    if (target === endpoint) saveForm(); // with the uploaded files' URLs, for a reload
    setStatus("Submitting…");
    submitted = await api(`/queue/${target.id}`, { method: "POST", body: input });
  } catch (error) {
    $("generate").disabled = false;
    showError(error);
    if (uploading && error.status !== 401) {
      markInvalid($(`${uploading.name}-file`));
      const label = IMAGE_FIELDS[uploading.name].label;
      $("form-error").textContent = `${label}: could not upload ${uploading.file.name}. ${$("form-error").textContent}`;
    }
    return;
  }
  const request = {
    request_id: submitted.request_id,
    status: submitted.status === "IN_PROGRESS" ? "IN_PROGRESS" : "IN_QUEUE", // COMPLETED once its result is read
    input,
    status_code: null,
    output: null,
    error: null,
    ...urlsOf(submitted.request_id),
  };
  updateRequest(request);
  display(request);
  await follow(request);
}

async function cancel() {
  if (!running) return;
  $("cancel").disabled = true;
  try {
    await api(running.request.cancel_url, { method: "PUT" });
    runningStatus("Cancelling…");
  } catch (error) {
    if (error.status !== 400) showError(error); // 400: it completed first
  } finally {
    $("cancel").disabled = false;
  }
}

// -- the result ----------------------------------------------------------------------------

/** Small images are scaled up by a whole factor (crisp pixels), large ones fit the stage. */
function sizeOnStage(element, width, height) {
  const scale = Math.max(1, Math.ceil(MIN_DISPLAY / Math.max(width, height, 1)));
  element.style.setProperty("--display-width", `${width * scale}px`);
  element.style.setProperty("--ratio", String(width / height));
  element.classList.toggle("upscaled", scale > 1);
}

function clearStage() {
  shown = null;
  const image = $("result-image");
  image.hidden = true;
  image.removeAttribute("src");
  image.alt = "";
  $("matte").hidden = true;
  $("show-matte").checked = false;
  $("result-caption").textContent = "";
  $("result-choices").hidden = true;
  $("result-choices").replaceChildren();
  $("view-controls").disabled = true;
}

/** The result panel now shows this request: nothing of the one before (logs, progress, image, error). */
function display(request) {
  displayed = request.request_id;
  displays += 1;
  remember(LAST_STORAGE, { request_id: request.request_id });
  $("logs").replaceChildren();
  $("progress").hidden = true;
  $("progress").value = 0;
  $("form-error").hidden = true;
  clearStage();
  for (const button of document.querySelectorAll("#gallery button")) {
    if (button.closest("li").dataset.requestId === displayed) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

/** A result on the stage: its first image, and where it has several, one button per image to show it. */
function showOutput(output, input, requestId) {
  const images = output.images && output.images.length ? output.images : [output.image];
  const choices = $("result-choices");
  choices.replaceChildren(...images.map((image, index) => {
    const button = document.createElement("button");
    button.type = "button";
    const thumb = document.createElement("img");
    noteFileOrigin(image.url);
    thumb.src = image.url;
    thumb.alt = "";
    button.append(thumb);
    button.setAttribute("aria-label", `Image ${index + 1} of ${images.length}`);
    button.addEventListener("click", () => showImage(output, input, requestId, index));
    return button;
  }));
  choices.hidden = images.length < 2;
  showImage(output, input, requestId, 0);
}

function showImage(output, input, requestId, index) {
  const images = output.images && output.images.length ? output.images : [output.image];
  const image = images[index];
  const element = $("result-image");
  noteFileOrigin(image.url);
  element.crossOrigin = "anonymous"; // the matte reads pixels back, also when files come from another origin
  element.src = image.url;
  const which = images.length > 1 ? ` ${index + 1} of ${images.length}` : "";
  element.alt = input && input.prompt ? `Generated image${which}: ${input.prompt}` : `Generated image${which}`;
  element.width = image.width;
  element.height = image.height;
  sizeOnStage(element, image.width, image.height);
  shown = { url: image.url, fileName: image.file_name, requestId };
  // Image i of a request was generated with seed + i (num_images).
  const seed = output.seed + index;
  const position = images.length > 1 ? `image ${index + 1} of ${images.length} · ` : "";
  const flagged = Boolean(output.has_nsfw_concepts && output.has_nsfw_concepts[index]);
  // The transparency check (has_transparency): a transparent layer that came out the same opacity everywhere.
  const flat = !flagged && output.has_transparency && output.has_transparency[index] === false
    && endpointOf(input || {}).transparent;
  $("result-caption").textContent = `${position}${image.width}×${image.height} · seed ${seed} · `
    + `${(image.file_size / 1024).toFixed(0)} KB${flat ? " · no transparency" : ""}`;
  [...$("result-choices").children].forEach((button, other) => button.setAttribute("aria-pressed", String(other === index)));
  $("view-controls").disabled = false;
  $("show-matte").checked = false;
  showView();
  if (flagged) setStatus("The safety checker flagged this image, so it was made fully transparent.");
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
  const matte = $("show-matte").checked && Boolean(shown);
  image.hidden = matte || !shown;
  canvas.hidden = !matte;
  if (!matte) return;
  if (!image.complete) await image.decode();
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  sizeOnStage(canvas, canvas.width, canvas.height);
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
  const { requests } = await api(`/api/requests?limit=${GALLERY_LIMIT}`);
  const known = new Map(gallery.map((request) => [request.request_id, request]));
  gallery = requests.map((request) => {
    // The followed request is the live copy; a local completion beats an answer that was under way.
    if (running && running.request.request_id === request.request_id) return running.request;
    const local = known.get(request.request_id);
    return local && local.status === "COMPLETED" && request.status !== "COMPLETED" ? local : request;
  });
  $("gallery").replaceChildren(...gallery.map(galleryItem));
  $("gallery-empty").hidden = gallery.length > 0;
}

/** Adds a request at the top of the gallery, or redraws its tile where it already is. */
function updateRequest(request) {
  const list = $("gallery");
  const index = gallery.findIndex((other) => other.request_id === request.request_id);
  const item = galleryItem(request);
  if (index >= 0) {
    gallery[index] = request;
    const old = [...list.children].find((child) => child.dataset.requestId === request.request_id);
    if (old) {
      const focused = old.contains(document.activeElement);
      old.replaceWith(item);
      if (focused) item.querySelector("button").focus();
    }
  } else {
    gallery.unshift(request);
    list.prepend(item);
    while (gallery.length > GALLERY_LIMIT) {
      gallery.pop();
      list.lastElementChild.remove();
    }
  }
  $("gallery-empty").hidden = gallery.length > 0;
}

/** Tiles of requests the page does not follow (another tab's, or from before a reload) follow their
 * status too: each unfinished one is asked now and then, and the gallery is read again once one ends. */
async function watchUnfinished() {
  const followed = running && running.request.request_id;
  const waiting = gallery.filter((request) => request.status !== "COMPLETED" && request.request_id !== followed);
  if (!apiKey || !waiting.length) return;
  let ended = false;
  for (const request of waiting) {
    let status;
    try {
      status = await api(`${request.status_url}?logs=0`);
    } catch {
      continue; // asked again at the next round
    }
    if (status.status === "COMPLETED") ended = true;
    else if (status.status !== request.status && gallery.includes(request)) {
      request.status = status.status;
      updateRequest(request);
    }
  }
  if (ended) await loadGallery();
}

function stateOf(request) {
  if (request.output) return "show image";
  if (request.status === "IN_QUEUE") return "queued";
  if (request.status === "IN_PROGRESS") return "running";
  return request.status_code === 499 ? "cancelled" : "failed";
}

function galleryItem(request) {
  const item = document.createElement("li");
  item.dataset.requestId = request.request_id;
  const button = document.createElement("button");
  button.type = "button";
  const prompt = (request.input && request.input.prompt) || "(no prompt)";
  const thumb = document.createElement("span");
  thumb.className = "thumb";
  if (request.output) {
    const image = document.createElement("img");
    noteFileOrigin(request.output.image.url);
    image.src = request.output.image.url;
    image.alt = "";
    image.loading = "lazy";
    thumb.append(image);
  } else {
    const note = document.createElement("span");
    note.className = "state";
    note.textContent = request.status === "COMPLETED"
      ? describe(request.status_code, { detail: request.error })
      : request.status.replace("_", " ").toLowerCase();
    thumb.append(note);
  }
  const target = endpointOfRequest(request);
  const endpointName = document.createElement("span");
  endpointName.className = "endpoint";
  endpointName.textContent = target.title;
  const caption = document.createElement("span");
  caption.className = "caption";
  caption.textContent = prompt;
  button.append(thumb, endpointName, caption);
  button.setAttribute("aria-label", `${prompt}: ${stateOf(request)}`);
  button.title = target.title;
  if (request.request_id === displayed) button.setAttribute("aria-current", "true");
  button.addEventListener("click", () => openRequest(request.request_id));
  item.append(button);
  return item;
}

function openRequest(requestId) {
  const request = gallery.find((other) => other.request_id === requestId);
  if (!request) return;
  clearErrors();
  selectEndpoint(endpointOfRequest(request));
  fillForm(request.input || {});
  saveForm();
  showRequest(request);
}

/** Shows a request on the result panel: its image or error, its own logs, or its progress if followed. */
function showRequest(request) {
  const id = request.request_id;
  display(request);
  if (running && running.request.request_id === id) {
    renderRunning();
  } else if (request.output) {
    showOutput(request.output, request.input, id);
    setStatus(`Request ${id}`);
    showStoredLogs(request);
  } else if (request.status !== "COMPLETED") {
    if (!running) follow(request).catch(showError);
    else {
      const state = request.status === "IN_QUEUE" ? "queued" : "running";
      setStatus(`This request is ${state}; the page follows one request at a time. Press Refresh later to see it.`);
    }
  } else {
    showError(new ApiError(request.status_code, { detail: request.error }));
    showStoredLogs(request);
  }
}

/** A finished request's logs, kept by the server, when it is still the one on the result panel. */
async function showStoredLogs(request) {
  const shownSince = displays;
  try {
    const status = await api(`${urlsOf(request.request_id).status_url}?logs=1`);
    if (displays === shownSince) showLogs(status.logs || []);
  } catch {
    // the logs are a convenience: the result is already shown
  }
}

/** After a reload: the request shown last, from the gallery, or from its status and result. */
async function restoreLast() {
  const last = recall(LAST_STORAGE);
  const id = last && typeof last.request_id === "string" ? last.request_id : null;
  if (!id || displayed || running) return;
  let request = gallery.find((other) => other.request_id === id);
  if (!request) {
    const urls = urlsOf(id);
    let status;
    try {
      status = await api(`${urls.status_url}?logs=0`);
    } catch (error) {
      if (error instanceof ApiError && [404, 422].includes(error.status)) remember(LAST_STORAGE, null);
      return;
    }
    request = { request_id: id, status: status.status, input: {}, status_code: null, output: null, error: status.error ?? null, ...urls };
    if (status.status === "COMPLETED") {
      try {
        request.output = await api(urls.response_url);
        request.status_code = 200;
      } catch (error) {
        if (!(error instanceof ApiError)) return;
        request.status_code = error.status;
      }
    }
  }
  if (displayed || running) return; // the user was quicker
  showRequest(request);
}

// -- copy as code --------------------------------------------------------------------------

/** An image the snippet reads from a local file (the clients upload it; curl gets a placeholder URL). */
class LocalFile {
  constructor(name, type) {
    this.name = name;
    this.type = type;
  }

  get placeholder() {
    return `https://example.com/${encodeURIComponent(this.name)}`;
  }
}

/** The input as the snippets send it: an image field holds its typed URL, else the file chosen for it
 * (or a file name to replace), which the official clients upload themselves. */
function codeInput() {
  const images = {};
  for (const name of endpoint.images) {
    const file = chosen[name] && chosen[name].file;
    images[name] = $(name).value.trim() || (file ? new LocalFile(file.name, file.type) : new LocalFile(IMAGE_FIELDS[name].file, "image/png"));
  }
  return { ...images, ...readInput(), ...images }; // the images first, as they are
}

function pythonLiteral(value) {
  if (value === true) return "True";
  if (value === false) return "False";
  if (value === null) return "None";
  if (value instanceof LocalFile) return `fal_client.encode_file(${JSON.stringify(value.name)})`;
  if (Array.isArray(value)) return `[${value.map(pythonLiteral).join(", ")}]`;
  if (typeof value === "object") {
    return `{${Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${pythonLiteral(item)}`).join(", ")}}`;
  }
  return JSON.stringify(value);
}

/** JSON, but a local file is read into a Blob (which fal.subscribe uploads). */
function javascriptLiteral(value) {
  if (value instanceof LocalFile) {
    return `new Blob([await readFile(${JSON.stringify(value.name)})], { type: ${JSON.stringify(value.type)} })`;
  }
  if (value && typeof value === "object") {
    return `{${Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${javascriptLiteral(item)}`).join(", ")}}`;
  }
  return JSON.stringify(value);
}

/** JSON on one line with a space after each comma and colon, where a long line can wrap. */
function spacedJson(value, replacer) {
  return JSON.stringify(value, replacer, 1).replace(/\n */g, " ").replace(/^\{ /, "{").replace(/ \}$/, "}");
}

/** The OpenAI SDKs' call for an input: fields OpenAI names by their names, ours in extra_body.
 * Text to image is images.generate; image to image (one image) and background + blended to
 * foreground (two, in that order) are images.edit; the other endpoints have no OpenAI form. */
function openaiCall(target, input) {
  const imageFields = { "": [], "image-to-image": ["image_url"], "background-blended-to-foreground": ["background_image_url", "blended_image_url"] }[target.path];
  if (imageFields === undefined) return null;
  const model = serverInfo ? serverInfo.model.name : "sdxl";
  const fields = { model, prompt: input.prompt || "" };
  const extra = {};
  for (const [name, value] of Object.entries(input)) {
    if (name === "prompt" || name === "width" || name === "height" || imageFields.includes(name)) continue;
    if (name === "num_images") fields.n = value;
    else if (name === "enable_safety_checker") fields.moderation = value ? "auto" : "low";
    else extra[name] = value;
  }
  if (input.width && input.height) fields.size = `${input.width}x${input.height}`;
  fields.background = "transparent";
  const images = imageFields.map((name) => input[name]);
  return { method: imageFields.length ? "edit" : "generate", fields, extra, images };
}

function openaiCode(language, target, input) {
  const call = openaiCall(target, input);
  const origin = window.location.origin;
  if (call === null) {
    const comment = language === "openai-python" ? "#" : "//";
    return `${comment} ${target.title} has no OpenAI Images form: use the fal clients (the other tabs)\n`;
  }
  const imageName = (value, index) => (value instanceof LocalFile ? value.name : `image-${index + 1}.png`);
  if (language === "openai-python") {
    const args = Object.entries(call.fields).map(([name, value]) => `    ${name}=${pythonLiteral(value)},\n`);
    if (call.images.length === 1) args.unshift(`    image=open(${JSON.stringify(imageName(call.images[0], 0))}, "rb"),\n`);
    if (call.images.length > 1) {
      args.unshift(`    image=[${call.images.map((value, index) => `open(${JSON.stringify(imageName(value, index))}, "rb")`).join(", ")}],  # background, blended\n`);
    }
    if (Object.keys(call.extra).length) args.push(`    extra_body=${pythonLiteral(call.extra)},\n`);
    return "# pip install openai\n# export OPENAI_API_KEY=<your key>\nimport base64\n\nfrom openai import OpenAI\n\n" +
      `client = OpenAI(base_url="${origin}/v1")\nresult = client.images.${call.method}(\n${args.join("")})\n` +
      'for index, image in enumerate(result.data):\n    with open(f"image-{index}.png", "wb") as file:\n' +
      "        file.write(base64.b64decode(image.b64_json))\n";
  }
  const body = { ...call.fields, ...call.extra };
  const read = call.images.length ? 'import { readFile, writeFile } from "node:fs/promises";\n' : 'import { writeFile } from "node:fs/promises";\n';
  const files = call.images.map((value, index) => {
    const name = JSON.stringify(imageName(value, index));
    return `await toFile(await readFile(${name}), ${name}, { type: "image/png" })`;
  });
  const image = files.length === 1 ? `  image: ${files[0]},\n` : files.length ? `  image: [${files.join(", ")}], // background, blended\n` : "";
  const entries = Object.entries(body).map(([name, value]) => `  ${JSON.stringify(name)}: ${javascriptLiteral(value)},\n`).join("");
  return `// npm install openai; export OPENAI_API_KEY=<your key>\n${read}import OpenAI${files.length ? ", { toFile }" : ""} from "openai";\n\n` +
    `const client = new OpenAI({ baseURL: "${origin}/v1" });\nconst result = await client.images.${call.method}({\n${image}${entries}});\n` +
    'for (const [index, image] of result.data.entries()) {\n  await writeFile(`image-${index}.png`, Buffer.from(image.b64_json, "base64"));\n}\n';
}

function codeFor(language, target, input) {
  const origin = window.location.origin;
  const files = Object.values(input).filter((value) => value instanceof LocalFile);
  if (language.startsWith("openai-")) return openaiCode(language, target, input);
  if (language === "python") {
    const host = `${window.location.hostname}:${HTTPS_PORT}`;
    const caFile = serverInfo ? serverInfo.ca_file : "<data dir>/tls/ca.pem";
    const trust = caFile ? `# export SSL_CERT_FILE=${caFile}   # the server's local CA\n` : "";
    const setup = HTTPS_PORT
      ? `# export FAL_KEY=<your key>\n# export FAL_RUN_HOST=${host}/run\n# export FAL_QUEUE_RUN_HOST=${host}/queue\n${trust}`
      : "# fal_client needs the server's https listener (start it without --tls-port 0)\n";
    const limit = serverInfo ? ` (up to ${mebibytes(serverInfo.max_inline_image_bytes)} per image here)` : "";
    const uploads = files.length
      ? `# encode_file sends the file inline, as a data: URI${limit}; for larger files use\n` +
        "# fal_client.upload_file, with rest.fal.ai and v3.fal.media pointed at this server (see its README)\n"
      : "";
    return `# pip install fal-client\n${setup}${uploads}import fal_client\n\nresult = fal_client.subscribe(\n    "${target.id}",\n` +
      `    arguments=${pythonLiteral(input)},\n    with_logs=True,\n)\nprint(result["seed"], result["image"]["url"])\n`;
  }
  if (language === "javascript") {
    const read = files.length ? 'import { readFile } from "node:fs/promises";\n' : "";
    return `// npm install @fal-ai/client\n${read}import { fal } from "@fal-ai/client";\n\nfal.config({\n  credentials: process.env.FAL_KEY,\n` +
      `  proxyUrl: { url: "${origin}/api/fal/proxy", when: "always" },\n});\n` +
      `const { data } = await fal.subscribe("${target.id}", {\n  input: ${javascriptLiteral(input)},\n  logs: true,\n});\n` +
      "console.log(data.seed, data.image.url);\n";
  }
  const replace = files.length
    ? `# Replace ${files.map((file) => file.placeholder).join(" and ")} with ` +
      (files.length > 1 ? "your images' http(s) URLs (or data: URIs)\n" : "your image's http(s) URL (or a data: URI)\n")
    : "";
  const body = spacedJson(input, (key, value) => (value instanceof LocalFile ? value.placeholder : value)).replaceAll("'", "'\\''");
  return `${replace}curl -X POST ${origin}/run/${target.id} \\\n  -H "Authorization: Key $FAL_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d '${body}'\n`;
}

/** A "Copied." note is about the text it copied: it goes when the text changes. */
function updateCode() {
  const text = codeFor(codeLanguage, endpoint, codeInput());
  if ($("code-text").textContent === text) return;
  $("code-text").textContent = text;
  $("copy-status").textContent = "";
}

function selectTab(tab) {
  for (const other of document.querySelectorAll("[role=tab]")) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
  }
  codeLanguage = tab.dataset.language;
  $("code-text").setAttribute("aria-labelledby", tab.id);
  $("copy-status").textContent = "";
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

buildImageInputs();
$("endpoint").replaceChildren(...ENDPOINTS.map((other) => new Option(other.title, other.path)));
$("endpoint").addEventListener("input", () => {
  clearErrors();
  selectEndpoint(ENDPOINTS.find((other) => other.path === $("endpoint").value) || ENDPOINTS[0]);
});
// A file dropped next to a drop zone must not replace the page (and its form) with the file.
for (const type of ["dragover", "drop"]) {
  window.addEventListener(type, (event) => {
    if (event.defaultPrevented || ![...event.dataTransfer.types].includes("Files")) return; // a drop zone's
    event.preventDefault();
    event.dataTransfer.dropEffect = "none";
  });
}
$("key-form").addEventListener("submit", saveKey);
$("change-key").addEventListener("click", () => showKeyPanel());
$("generate-form").addEventListener("submit", generate);
$("generate-form").addEventListener("input", (event) => {
  formTouched = true;
  recheck(event);
  updateCode();
  saveForm();
});
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

async function start() {
  selectEndpoint(ENDPOINTS[0]);
  const galleryLoaded = apiKey ? loadGallery() : null;
  if (apiKey) $("change-key").hidden = false;
  else showKeyPanel();
  await Promise.all([loadSchemas().catch(() => {}), loadInfo().catch(() => {})]);
  setInterval(() => watchUnfinished().catch(() => {}), 2000);
  restoreForm(); // after the schema: it sets the defaults the saved values differ from
  if (!galleryLoaded) return;
  try {
    await galleryLoaded;
  } catch (error) {
    showError(error);
    return;
  }
  await restoreLast();
}

start().catch(showError);
