// The demo page: pick models and an input (a real test example or a drawing), stream it one step at a
// time to every model at once, and watch who answers when. Deep links:
//   /?models=a,b,c&sample=I&autoplay=1&interval_ms=N

import { Api } from "./api.js";
import { drawable, preprocessStrokes, renderSequence, sequenceFromImage, stepShape } from "./digits.js";
import { KIND, ModelPanel } from "./panel.js";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "psn-serve-api-key";
const KIND_ORDER = ["psn", "masked_psn", "sliding_psn", "lif"];
const DRAW_PEN = 20; // stage pixels (the stage is 280×280)

const state = {
  api: new Api(storedKey()),
  models: [], // READY entries of GET /v1/models
  selected: [], // model names, in panel order
  panels: new Map(), // name -> ModelPanel
  mode: "sample", // "sample" | "draw"
  sample: 0,
  interval: 80,
  autoplay: false,
  examples: new Map(), // `${name}/${i}` -> Promise of the example
  thumbs: null, // {model, count}
  strokes: [],
  drawing: null, // Float32Array(784), the preprocessed digit
  run: null, // the play in progress: {cancelled}
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
  $("error").hidden = true;
  $("error").textContent = "";
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
    $("server-version").textContent = e.status === 401 ? "API key needed" : "unreachable";
    if (e.status === 401) {
      $("key-form").hidden = false;
      $("api-key").focus();
    }
    showError(`Cannot list the models: ${e}`);
    setState("error");
    return;
  }
  state.api.server().then(
    (v) => { $("server-version").textContent = `${v.name} ${v.version}`; },
    () => { $("server-version").textContent = "psn-serve"; },
  );
  $("server-dot").className = "dot ok";
  state.models = doc.models.filter((m) => m.status === "ready" && m.manifest);
  const failed = doc.models.filter((m) => m.status !== "ready");
  if (!state.models.length) {
    showError("The server has no model ready" + (failed.length ? `: ${failed.map((m) => `${m.name} (${m.status})`).join(", ")}` : "."));
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

function byKind(a, b) {
  return KIND_ORDER.indexOf(a.manifest.kind) - KIND_ORDER.indexOf(b.manifest.kind) || a.name.localeCompare(b.name);
}

function chooseModels(wanted) {
  const names = new Set(state.models.map((m) => m.name));
  if (wanted.length) {
    const unknown = wanted.filter((n) => !names.has(n));
    if (unknown.length) showError(`Not served here (or not ready): ${unknown.join(", ")}`);
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

function buildPicker() {
  const picker = $("model-picker");
  picker.replaceChildren();
  const groups = new Map();
  for (const m of [...state.models].sort(byKind)) {
    const key = m.manifest.dataset;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(m);
  }
  for (const [dataset, models] of groups) {
    const group = document.createElement("div");
    group.className = "picker-group";
    const title = document.createElement("span");
    title.className = "picker-title";
    title.textContent = dataset;
    group.append(title);
    for (const m of models) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "model-chip";
      chip.dataset.name = m.name;
      chip.style.setProperty("--accent", (KIND[m.manifest.kind] || {}).accent || "#9aa4bf");
      chip.textContent = m.name;
      chip.title = `${m.manifest.kind}, T = ${m.manifest.T}, test accuracy ${(100 * m.manifest.test_accuracy).toFixed(1)} %`;
      chip.addEventListener("click", () => toggleModel(m.name));
      group.append(chip);
    }
    picker.append(group);
  }
  syncPicker();
}

function syncPicker() {
  for (const chip of document.querySelectorAll(".model-chip")) {
    chip.setAttribute("aria-pressed", String(state.selected.includes(chip.dataset.name)));
  }
}

async function toggleModel(name) {
  stop();
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
  await loadThumbs();
  await loadInputs();
  updateLink();
}

function activePanels() {
  return state.selected.map((n) => state.panels.get(n));
}

// ---- inputs --------------------------------------------------------------------------------------

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
        if (!ok) panel.showError(`A drawing does not fit this model's input (per step ${JSON.stringify(shape)}, T = ${m.T}).`);
        return;
      }
      try {
        const ex = await example(panel.name, state.sample);
        panel.setInput(ex.inputs, shape, ex.label);
      } catch (e) {
        panel.setInput(null, shape, null);
        panel.showError(`No example ${state.sample}: ${e.message}`);
        if (e.status !== 404) problems.push(`${panel.name}: ${e}`);
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
      list = await state.api.examples(name);
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
  state.thumbs = null;
  box.replaceChildren(Object.assign(document.createElement("p"), { className: "muted", textContent: "These models ship no examples: draw one." }));
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
  cap.textContent = p && p.seq ? `test example ${state.sample} · true label ${p.truth} · T = ${p.seq.length} steps` : "";
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
    $("interval-out").textContent = state.interval === 0 ? "as fast as answers come" : `${state.interval} ms / step`;
  };
  slider.addEventListener("input", () => {
    state.interval = Number(slider.value);
    showInterval();
  });
  slider.addEventListener("change", updateLink);
  slider.value = String(state.interval); // a deep link may ask for more than the slider's end
  showInterval();
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    try {
      localStorage.setItem(KEY_STORE, key);
    } catch {
      /* private mode: the key lives for this page only */
    }
    state.api = new Api(key);
    state.examples.clear();
    state.thumbs = null;
    connect(readParams());
  });
  if (state.api.key) {
    $("key-form").hidden = false;
    $("api-key").value = state.api.key;
  }
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
