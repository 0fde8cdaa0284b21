// The demo page: pick models and an input (a real test example or a drawing), stream it one step at a
// time to every model at once, and watch who answers when. Deep links:
//   /?models=a,b,c&sample=I&autoplay=1&interval_ms=N

import { Api } from "./api.js";
import {
  drawable, inputKind, preprocessStrokes, randomSequence, renderSequence, sequenceFromImage, stepShape,
} from "./digits.js";
import { KIND, ModelPanel } from "./panel.js";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "psn-serve-api-key";
const KIND_ORDER = ["psn", "masked_psn", "sliding_psn", "lif"];
const DRAW_PEN = 20; // stage pixels (the stage is 280×280)
const PHONE = window.matchMedia("(max-width: 560px)");
const RANDOM_INPUTS = 10; // thumbnails offered for models that ship no examples
// the bundled data sets, as the picker names them; any other data set is described by its input's shape
const DATASETS = {
  smnist: { title: "sMNIST", hint: "a digit, one column per step" },
  mnist1d: { title: "MNIST-1D", hint: "a 1-D signal, one value per step" },
  mnist2d: { title: "MNIST-2D", hint: "the whole digit at every step" },
};

const state = {
  api: new Api(storedKey()),
  all: [], // every entry of GET /v1/models (loading and failed ones too)
  models: [], // READY entries of GET /v1/models
  selected: [], // model names, in panel order
  panels: new Map(), // name -> ModelPanel
  mode: "sample", // "sample" | "draw"
  sample: 0,
  interval: 80,
  autoplay: false,
  examples: new Map(), // `${name}/${i}` -> Promise of the example
  lists: new Map(), // name -> Promise of GET /v1/models/{name}/examples
  thumbs: null, // {model, count, random}
  strokes: [],
  drawing: null, // Float32Array(784), the preprocessed digit
  run: null, // the play in progress: {cancelled}
  notice: "", // why models the link named are not on screen (failed, loading, not served)
};

function storedKey() {
  try {
    return localStorage.getItem(KEY_STORE) || "";
  } catch {
    return "";
  }
}

// ---- errors and status ---------------------------------------------------------------------------

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  // what the deep link asked for and cannot have stays said until the selection changes
  $("error").hidden = !state.notice;
  $("error").textContent = state.notice;
}

function setState(name) {
  document.body.dataset.state = name;
}

// ---- start ---------------------------------------------------------------------------------------

function readParams() {
  const q = new URLSearchParams(location.search);
  const models = (q.get("models") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const sample = Number.parseInt(q.get("sample") ?? "", 10);
  const interval = Number.parseInt(q.get("interval_ms") ?? "", 10);
  return {
    models,
    sample: Number.isFinite(sample) && sample >= 0 ? sample : null,
    interval: Number.isFinite(interval) && interval >= 0 ? interval : null,
    autoplay: ["1", "true", "yes"].includes((q.get("autoplay") || "").toLowerCase()),
  };
}

async function connect(params) {
  clearError();
  setState("loading");
  $("server-version").textContent = "connecting…";
  $("server-dot").className = "dot";
  let doc;
  try {
    doc = await state.api.models();
  } catch (e) {
    $("server-dot").className = "dot bad";
    if (e.status === 401) return askForKey(e);
    $("server-version").textContent = "unreachable";
    showError(`Cannot list the models: ${e}`);
    setState("error");
    return;
  }
  $("key-form").hidden = true;
  $("key-forget").hidden = !state.api.key;
  state.api.server().then(
    (v) => { $("server-version").textContent = `${v.name} ${v.version}`; },
    () => { $("server-version").textContent = "psn-serve"; },
  );
  showDocLinks();
  $("server-dot").className = "dot ok";
  state.all = doc.models;
  state.models = doc.models.filter((m) => m.status === "ready" && m.manifest);
  if (!state.models.length) {
    buildPicker();
    showError(`The server has no model ready: ${doc.models.map(notReadyText).join("; ") || "no model directories"}.`);
    setState("error");
    return;
  }
  chooseModels(params.models);
  buildPicker();
  await applySelection();
  setState("ready");
  $("play").disabled = $("classify").disabled = false;
  if (params.autoplay) play();
}

function askForKey(e) {
  // a browser user does not send headers: the page asks for the key and sends it for them
  $("server-version").textContent = "needs an API key";
  $("key-form").hidden = false;
  $("key-forget").hidden = !state.api.key;
  $("key-hint").textContent = state.api.key
    ? `That key was not accepted (${e.status}: ${e.message}).`
    : "Ask its operator for one; the page keeps it in this browser only.";
  $("key-hint").classList.toggle("bad", Boolean(state.api.key));
  $("doc-links").hidden = true; // a server with a key serves no /docs
  setState("locked");
  $("api-key").focus();
}

function showDocLinks() {
  // /docs and /redoc exist only on a server without a key: with a key in use, ask before showing them
  const links = $("doc-links");
  if (!state.api.key) {
    links.hidden = false;
    return;
  }
  links.hidden = true;
  fetch("/openapi.json", { method: "HEAD", cache: "no-store" }).then(
    (r) => { links.hidden = !r.ok; },
    () => {},
  );
}

function notReadyText(m) {
  return m.status === "failed" ? `${m.name} failed to load: ${m.error || "no reason given"}` : `${m.name} is ${m.status}`;
}

function byKind(a, b) {
  return KIND_ORDER.indexOf(a.manifest.kind) - KIND_ORDER.indexOf(b.manifest.kind) || a.name.localeCompare(b.name);
}

function chooseModels(wanted) {
  const names = new Set(state.models.map((m) => m.name));
  if (wanted.length) {
    const missing = wanted.filter((n) => !names.has(n));
    if (missing.length) {
      const known = new Map(state.all.map((m) => [m.name, m]));
      state.notice = missing.map((n) => (known.has(n) ? notReadyText(known.get(n)) : `${n} is not served here`)).join("\n");
      showError(state.notice);
    }
    state.selected = wanted.filter((n) => names.has(n));
    if (state.selected.length) return;
  }
  // default: the four sequential-MNIST models, else up to four models of the first one's data set
  let group = state.models.filter((m) => m.manifest.dataset === "smnist");
  if (!group.length) group = state.models.filter((m) => m.manifest.dataset === state.models[0].manifest.dataset);
  state.selected = group.sort(byKind).slice(0, 4).map((m) => m.name);
}

function info(name) {
  return state.models.find((m) => m.name === name);
}

// ---- model picker and panels ---------------------------------------------------------------------

function datasetOf(m) {
  return (m.manifest && m.manifest.dataset) || "other";
}

function groupTitle(dataset, models) {
  const known = DATASETS[dataset];
  const m = models.find((x) => x.manifest);
  const hint = known ? known.hint : m ? inputKind(stepShape(m.manifest), m.manifest.T).step : "";
  const title = document.createElement("span");
  title.className = "picker-title";
  title.title = hint;
  const name = document.createElement("b");
  name.textContent = known ? known.title : dataset;
  const small = document.createElement("span");
  small.className = "picker-hint";
  small.textContent = hint ? ` · ${hint}` : "";
  title.append(name, small);
  return title;
}

function modelChip(m) {
  const chip = document.createElement("button");
  chip.type = "button";
  chip.className = "model-chip";
  chip.dataset.name = m.name;
  chip.dataset.status = m.status;
  chip.textContent = m.name;
  if (m.status === "ready" && m.manifest) {
    chip.style.setProperty("--accent", (KIND[m.manifest.kind] || {}).accent || "#9aa4bf");
    const acc = typeof m.manifest.test_accuracy === "number" ? `, test accuracy ${(100 * m.manifest.test_accuracy).toFixed(1)} %` : "";
    chip.title = `${m.manifest.kind}, T = ${m.manifest.T}${acc}`;
    chip.addEventListener("click", () => toggleModel(m.name));
  } else {
    chip.disabled = true; // shown, with its reason, never playable
    chip.classList.add(m.status);
    chip.title = notReadyText(m);
    const why = document.createElement("span");
    why.className = "why";
    why.textContent = m.status === "failed" ? "failed" : m.status;
    chip.append(why);
  }
  return chip;
}

function buildPicker() {
  const picker = $("model-picker");
  picker.replaceChildren();
  const groups = new Map();
  const order = (a, b) => (a.manifest && b.manifest ? byKind(a, b) : a.manifest ? -1 : b.manifest ? 1 : a.name.localeCompare(b.name));
  for (const m of [...state.all].sort(order)) {
    const key = datasetOf(m);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(m);
  }
  for (const [dataset, models] of groups) {
    const group = document.createElement("div");
    group.className = "picker-group";
    group.append(groupTitle(dataset, models), ...models.map(modelChip));
    picker.append(group);
  }
  syncPicker();
}

function syncPicker() {
  for (const chip of document.querySelectorAll(".model-chip")) {
    chip.setAttribute("aria-pressed", String(state.selected.includes(chip.dataset.name)));
  }
  const failed = state.all.length - state.models.length;
  $("picker-summary").textContent =
    `models (${state.selected.length} of ${state.models.length}${failed ? `, ${failed} not ready` : ""}): ` +
    state.selected.join(", ");
}

function fitPicker() {
  // a phone shows the picker folded into one line; a wider screen always shows it whole
  $("picker-box").open = !PHONE.matches;
}

async function toggleModel(name) {
  stop();
  state.notice = "";
  clearError();
  if (state.selected.includes(name)) {
    if (state.selected.length === 1) return;
    state.selected = state.selected.filter((n) => n !== name);
  } else {
    state.selected = [...state.selected, name].map(info).sort(byKind).map((m) => m.name);
  }
  syncPicker();
  await applySelection();
}

async function applySelection() {
  const container = $("panels");
  for (const name of state.selected) {
    if (!state.panels.has(name)) state.panels.set(name, new ModelPanel(info(name)));
  }
  container.replaceChildren(...state.selected.map((n) => state.panels.get(n).root));
  container.dataset.count = String(state.selected.length);
  describeInputs();
  await loadThumbs();
  await loadInputs();
  updateLink();
}

function describeInputs() {
  // the header and the draw tab say what one step is for the models on screen
  const shapes = state.selected.map((n) => info(n).manifest);
  const steps = [...new Set(shapes.map((m) => inputKind(stepShape(m), m.T).step))];
  $("lede-input").textContent = steps.length === 1 ? steps[0] : "one step at a time";
  const canDraw = shapes.some((m) => drawable(stepShape(m), m.T));
  $("tab-draw").disabled = !canDraw;
  $("tab-draw").title = canDraw ? "" : "none of these models takes a 28×28 digit";
  if (!canDraw && state.mode === "draw") state.mode = "sample";
}

function activePanels() {
  return state.selected.map((n) => state.panels.get(n));
}

// ---- inputs --------------------------------------------------------------------------------------

function exampleList(name) {
  if (!state.lists.has(name)) {
    const p = state.api.examples(name);
    p.catch(() => state.lists.delete(name)); // do not cache failures
    state.lists.set(name, p);
  }
  return state.lists.get(name);
}

function example(name, i) {
  const key = `${name}/${i}`;
  if (!state.examples.has(key)) {
    const p = state.api.example(name, i);
    p.catch(() => state.examples.delete(key)); // do not cache failures
    state.examples.set(key, p);
  }
  return state.examples.get(key);
}

async function loadInputs() {
  const problems = [];
  await Promise.all(
    activePanels().map(async (panel) => {
      const m = panel.info.manifest;
      const shape = stepShape(m);
      if (state.mode === "draw") {
        const ok = drawable(shape, m.T);
        panel.setInput(ok && state.drawing ? sequenceFromImage(state.drawing, shape, m.T) : null, shape, null);
        if (!ok) panel.setNote(`a drawing does not fit this model's input (${inputKind(shape, m.T).step})`);
        return;
      }
      try {
        const list = await exampleList(panel.name);
        if (state.sample >= list.count) {
          // no example i: a random input of the model's shape, the same for the same i
          panel.setInput(randomSequence(shape, m.T, state.sample), shape, null);
          panel.setNote(`random input ${state.sample}: this model ships no example ${state.sample}`);
          return;
        }
        const ex = await example(panel.name, state.sample);
        panel.setInput(ex.inputs, shape, ex.label);
      } catch (e) {
        panel.setInput(null, shape, null);
        panel.showError(`No example ${state.sample}: ${e.message}`);
        problems.push(`${panel.name}: ${e}`);
      }
    }),
  );
  if (problems.length) showError(problems.join("\n"));
  renderStage(-1);
  updateCaption();
}

async function loadThumbs() {
  // the examples of the first selected model that has any (the others of its data set share them)
  const box = $("samples");
  for (const name of state.selected) {
    if (state.thumbs && state.thumbs.model === name) return;
    let list;
    try {
      list = await exampleList(name);
    } catch (e) {
      showError(`Cannot list the examples of ${name}: ${e}`);
      continue;
    }
    if (!list.count) continue;
    state.thumbs = { model: name, count: list.count };
    if (state.sample >= list.count) state.sample = 0;
    const m = info(name).manifest;
    const shape = stepShape(m);
    const buttons = list.examples.map((e) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "thumb";
      b.dataset.sample = String(e.index);
      b.setAttribute("role", "option");
      b.title = `test example ${e.index}: label ${e.label}`;
      const c = document.createElement("canvas");
      c.width = c.height = 56;
      const label = document.createElement("span");
      label.textContent = e.label;
      b.append(c, label);
      b.addEventListener("click", () => pickSample(e.index));
      example(name, e.index).then((ex) => renderSequence(c, ex.inputs, shape), () => {});
      return b;
    });
    box.replaceChildren(...buttons);
    syncThumbs();
    return;
  }
  // no model here ships examples: random inputs of the first model's shape (and drawing, where it fits)
  const m = info(state.selected[0]).manifest;
  const shape = stepShape(m);
  state.thumbs = { model: state.selected[0], count: RANDOM_INPUTS, random: true };
  if (state.sample >= RANDOM_INPUTS) state.sample = 0;
  const buttons = Array.from({ length: RANDOM_INPUTS }, (_, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "thumb random";
    b.dataset.sample = String(i);
    b.setAttribute("role", "option");
    b.title = `random input ${i} of shape [${shape.join(", ")}] × ${m.T} steps`;
    const c = document.createElement("canvas");
    c.width = c.height = 56;
    const label = document.createElement("span");
    label.textContent = `r${i}`;
    b.append(c, label);
    b.addEventListener("click", () => pickSample(i));
    renderSequence(c, randomSequence(shape, m.T, i), shape);
    return b;
  });
  box.replaceChildren(...buttons);
  syncThumbs();
}

function syncThumbs() {
  for (const b of document.querySelectorAll(".thumb")) {
    b.setAttribute("aria-selected", String(state.mode === "sample" && Number(b.dataset.sample) === state.sample));
  }
}

async function pickSample(i) {
  stop();
  state.sample = i;
  if (state.mode !== "sample") return setMode("sample");
  syncThumbs();
  await loadInputs();
  updateLink();
}

async function setMode(mode) {
  stop();
  state.mode = mode;
  document.body.dataset.mode = mode;
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === mode);
  $("samples").hidden = mode !== "sample";
  $("draw-tools").hidden = mode !== "draw";
  $("stage").classList.toggle("drawing", mode === "draw");
  syncThumbs();
  await loadInputs();
  updateLink();
}

function primaryPanel() {
  return activePanels().find((p) => p.seq) || activePanels()[0];
}

function renderStage(t) {
  const stage = $("stage");
  if (state.mode === "draw") return renderDrawing();
  const p = primaryPanel();
  renderSequence(stage, p && p.seq, p ? p.shape : [1], t, p ? p.kind.accent : undefined);
  $("stage-hint").hidden = true;
}

let stageFrame = null;
function paintStage(t) {
  // at most one stage repaint per animation frame
  if (stageFrame) cancelAnimationFrame(stageFrame);
  stageFrame = requestAnimationFrame(() => {
    stageFrame = null;
    renderStage(t);
  });
}

function updateCaption() {
  const cap = $("stage-caption");
  if (state.mode === "draw") {
    cap.textContent = state.drawing ? "your digit, preprocessed like MNIST, streamed column by column" : "";
    return;
  }
  const p = primaryPanel();
  if (!p || !p.seq) cap.textContent = "";
  else if (p.truth === null) cap.textContent = `random input ${state.sample} · T = ${p.seq.length} steps`;
  else cap.textContent = `test example ${state.sample} · true label ${p.truth} · T = ${p.seq.length} steps`;
}

// ---- drawing -------------------------------------------------------------------------------------

function renderDrawing() {
  const stage = $("stage");
  const ctx = stage.getContext("2d");
  const W = stage.width;
  ctx.fillStyle = "#0b1020";
  ctx.fillRect(0, 0, W, W);
  ctx.strokeStyle = "rgba(255,255,255,0.045)";
  ctx.lineWidth = 1;
  for (let i = 1; i < 28; i++) {
    const x = Math.round((i * W) / 28) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, W); ctx.moveTo(0, x); ctx.lineTo(W, x); ctx.stroke();
  }
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineWidth = DRAW_PEN;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.shadowColor = "rgba(62,224,165,0.55)";
  ctx.shadowBlur = 12;
  for (const s of state.strokes) {
    ctx.beginPath();
    if (s.length === 1) {
      ctx.arc(s[0].x, s[0].y, DRAW_PEN / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.moveTo(s[0].x, s[0].y);
    for (const p of s.slice(1)) ctx.lineTo(p.x, p.y);
    ctx.stroke();
  }
  ctx.shadowBlur = 0;
  $("stage-hint").hidden = state.strokes.length > 0;
}

function renderPreview() {
  const c = $("preview");
  const ctx = c.getContext("2d");
  const image = ctx.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const v = state.drawing ? state.drawing[i] : 0;
    image.data[4 * i] = 11 + 244 * v;
    image.data[4 * i + 1] = 16 + 239 * v;
    image.data[4 * i + 2] = 32 + 223 * v;
    image.data[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function setupDrawing() {
  const stage = $("stage");
  let current = null;
  const point = (e) => {
    const r = stage.getBoundingClientRect();
    return { x: ((e.clientX - r.left) * stage.width) / r.width, y: ((e.clientY - r.top) * stage.height) / r.height };
  };
  stage.addEventListener("pointerdown", (e) => {
    if (state.mode !== "draw") return;
    e.preventDefault();
    stop();
    stage.setPointerCapture(e.pointerId);
    current = [point(e)];
    state.strokes.push(current);
    renderDrawing();
  });
  stage.addEventListener("pointermove", (e) => {
    if (!current) return;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) current.push(point(ev));
    renderDrawing();
  });
  const end = () => {
    if (!current) return;
    current = null;
    drawingChanged();
  };
  stage.addEventListener("pointerup", end);
  stage.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", () => {
    stop();
    state.strokes = [];
    drawingChanged();
  });
}

async function drawingChanged() {
  state.drawing = preprocessStrokes(state.strokes);
  renderPreview();
  renderDrawing();
  await loadInputs();
}

// ---- play and classify ---------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function stop() {
  if (state.run) state.run.cancelled = true;
}

function setPlaying(on) {
  $("play-text").textContent = on ? "Stop" : "Play";
  $("play").querySelector(".icon").textContent = on ? "■" : "▶";
  $("play").classList.toggle("playing", on);
  setState(on ? "playing" : "ready");
}

async function play() {
  if (state.run) return stop();
  const run = { cancelled: false };
  state.run = run;
  setPlaying(true);
  clearError();
  const panels = activePanels().filter((p) => p.seq);
  panels.forEach((p) => p.reset());
  if (!panels.length) showError(state.mode === "draw" ? "Draw a digit first." : "No input for these models.");
  const opened = await Promise.allSettled(panels.map((p) => state.api.openStream(p.name)));
  const drives = [];
  const t0 = performance.now();
  opened.forEach((result, i) => {
    const panel = panels[i];
    if (result.status === "rejected") {
      panel.showError(String(result.reason));
      showError(`${panel.name}: ${result.reason}`);
      panel.finish();
      return;
    }
    panel.hello(result.value.hello);
    drives.push(drive(panel, result.value, t0, run));
  });
  await Promise.all(drives);
  if (state.run === run) state.run = null;
  paintStage(-1);
  setPlaying(false);
}

async function drive(panel, stream, t0, run) {
  const T = panel.seq.length;
  let due = t0;
  try {
    for (let t = 0; t < T && !run.cancelled; t++) {
      if (t > 0) due += state.interval;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      if (run.cancelled) break;
      panel.sending(t);
      if (panel === primaryPanel()) paintStage(t);
      const sent = performance.now();
      let answer;
      try {
        answer = await stream.step(panel.seq[t].flat(Infinity));
      } catch (e) {
        panel.showError(String(e));
        showError(`${panel.name}: ${e}`);
        break;
      }
      const now = performance.now();
      panel.step(answer, now - sent, now - t0);
      if (answer.done && t < T - 1) break;
    }
  } finally {
    stream.close();
    panel.finish();
  }
}

async function classifyAll() {
  const panels = activePanels().filter((p) => p.seq);
  await Promise.all(
    panels.map(async (panel) => {
      const start = performance.now();
      try {
        const result = await state.api.classify(panel.name, panel.seq);
        panel.showClassify(result, performance.now() - start);
      } catch (e) {
        panel.showError(`classify: ${e}`);
        showError(`${panel.name}: classify: ${e}`);
      }
    }),
  );
}

// ---- links and controls --------------------------------------------------------------------------

function viewQuery(autoplay) {
  const q = new URLSearchParams();
  q.set("models", state.selected.join(","));
  if (state.mode === "sample") q.set("sample", String(state.sample));
  q.set("interval_ms", String(state.interval));
  if (autoplay) q.set("autoplay", "1");
  return `?${q.toString().replaceAll("%2C", ",")}`;
}

function updateLink() {
  $("deep-link").href = `/${viewQuery(true)}`;
  history.replaceState(null, "", `/${viewQuery(false)}`);
}

function setupControls() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => setMode(tab.dataset.tab));
  $("play").addEventListener("click", () => play());
  $("classify").addEventListener("click", () => classifyAll());
  const slider = $("interval");
  const showInterval = () => {
    $("interval-out").textContent = state.interval === 0 ? "no wait" : `${state.interval} ms`;
    $("interval").title = state.interval === 0 ? "each step as soon as the last one is answered" : "";
  };
  slider.addEventListener("input", () => {
    state.interval = Number(slider.value);
    showInterval();
  });
  slider.addEventListener("change", updateLink);
  slider.value = String(state.interval); // a deep link may ask for more than the slider's end
  showInterval();
  const useKey = (key) => {
    try {
      if (key) localStorage.setItem(KEY_STORE, key);
      else localStorage.removeItem(KEY_STORE);
    } catch {
      /* private mode: the key lives for this page only */
    }
    state.api = new Api(key);
    state.examples.clear();
    state.lists.clear();
    state.thumbs = null;
    connect(readParams());
  };
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    useKey($("api-key").value.trim());
  });
  $("key-forget").addEventListener("click", () => {
    $("api-key").value = "";
    useKey("");
  });
  if (state.api.key) $("api-key").value = state.api.key;
  fitPicker();
  PHONE.addEventListener("change", fitPicker);
  document.body.dataset.mode = state.mode;
  document.addEventListener("keydown", (e) => {
    if (e.code === "Space" && !["INPUT", "BUTTON", "A"].includes(document.activeElement?.tagName) && !$("play").disabled) {
      e.preventDefault();
      play();
    }
  });
}

// for tests and for the curious: the exact inputs each panel streams
window.psnDemo = {
  inputs: (name) => state.panels.get(name)?.seq ?? null,
  state,
  play,
  classify: classifyAll,
};

const params = readParams();
if (params.sample !== null) state.sample = params.sample;
if (params.interval !== null) state.interval = Math.min(params.interval, 5000);
setupControls();
setupDrawing();
renderPreview();
connect(params);
