// One model's panel: live label, probability bars, top-probability chart and timing, with data-* hooks
// (data-model, data-t, data-label, data-first-ready, data-done) kept up to date for tests and kiosks.

import { renderSequence } from "./digits.js";

export const KIND = {
  psn: { name: "PSN", accent: "#f5a524", blurb: "H = W·X over all T steps: it cannot answer before the last input." },
  masked_psn: { name: "masked PSN", accent: "#b692f6", blurb: "A k-step band of W: answers every step, at most T steps." },
  sliding_psn: { name: "sliding PSN", accent: "#3ee0a5", blurb: "Shared weights over the last k inputs: answers every step, any length." },
  lif: { name: "LIF", accent: "#5cb8ff", blurb: "The recurrent baseline (hard reset): answers every step." },
};

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

export function providerName(provider) {
  if (!provider) return "?";
  return provider.replace(/ExecutionProvider$/, "");
}

function accuracyText(accuracy) {
  return typeof accuracy === "number" ? `acc ${(100 * accuracy).toFixed(1)} %` : "acc –";
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(1)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

function median(values) {
  if (!values.length) return null;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export class ModelPanel {
  constructor(info) {
    this.info = info; // the /v1/models entry
    const m = info.manifest;
    this.name = info.name;
    this.kind = KIND[m.kind] || { name: m.kind, accent: "#9aa4bf", blurb: "" };
    this.T = m.T;
    this.labels = m.labels;
    this.seq = null; // [T][...shape] this panel is fed
    this.shape = null;
    this.truth = null; // the true label of the example, when known
    this.build(m);
    this.reset();
  }

  build(m) {
    const kindText = this.kind.name + (m.k ? ` · k=${m.k}` : "");
    this.providerEl = el("span", { class: "chip provider", title: "execution provider", text: providerName(this.info.provider) });
    this.mini = el("canvas", { class: "mini", width: 168, height: 168 });
    this.big = el("div", { class: "big-label", text: "–" });
    this.conf = el("div", { class: "conf", text: "" });
    this.waitText = el("div", { class: "wait-text", text: `waiting for all ${m.T} steps` });
    this.waitBar = el("div", { class: "wait-bar" }, el("span"));
    this.waiting = el("div", { class: "waiting" }, this.waitText, this.waitBar);
    this.bars = el("div", { class: "bars" });
    this.barEls = this.labels.map((label) => {
      const fill = el("span", { class: "fill" });
      const bar = el("div", { class: "bar", title: label }, el("div", { class: "track" }, fill), el("span", { class: "bar-label", text: label }));
      this.bars.append(bar);
      return { bar, fill };
    });
    this.chart = svg("svg", { class: "chart", viewBox: "0 0 300 70", preserveAspectRatio: "none" });
    this.firstEl = el("dd", { text: "–" });
    this.rttEl = el("dd", { text: "–" });
    this.stepEl = el("dd", { text: "–" });
    const stat = (name, dd, title) => el("div", { title }, el("dt", { text: name }), dd);
    this.classifyEl = el("div", { class: "classify-result", hidden: "" });
    this.errorEl = el("div", { class: "panel-error", role: "alert", hidden: "" });
    this.noteEl = el("div", { class: "panel-note", hidden: "" });
    this.root = el(
      "article",
      { class: `panel kind-${m.kind}`, "data-model": this.name },
      el("header", {}, el("h2", { text: this.name })),
      el("div", { class: "meta" },
        el("span", { class: "chip kind", text: kindText }),
        this.providerEl,
        el("span", { class: "chip acc", title: "test accuracy (from the manifest)", text: accuracyText(m.test_accuracy) })),
      el("p", { class: "blurb", text: this.kind.blurb }),
      this.noteEl,
      el("div", { class: "panel-main" },
        this.mini,
        el("div", { class: "answer" }, this.big, this.conf, this.waiting)),
      el("dl", { class: "stats" },
        stat("first answer", this.firstEl, "step of the first ready answer, and the time from sending step 0 to it"),
        stat("step RTT p50", this.rttEl, "median round trip of one step as this page sees it (send → answer), so far"),
        stat("step", this.stepEl, "last step answered")),
      this.bars,
      el("div", { class: "chart-wrap" }, el("div", { class: "chart-title", text: "top probability over t" }), this.chart),
      this.classifyEl,
      this.errorEl,
    );
    this.root.style.setProperty("--accent", this.kind.accent); // CSSOM: allowed by the page's CSP
  }

  setInput(seq, shape, truth) {
    this.seq = seq;
    this.shape = shape;
    this.truth = truth ?? null;
    this.setNote(null);
    this.reset();
  }

  setNote(text) {
    this.noteEl.hidden = !text;
    this.noteEl.textContent = text || "";
  }

  reset() {
    this.t = -1; // last step answered
    this.sendingT = -1; // step in flight
    this.answer = null; // last ready answer
    this.streams = true; // false for a PSN (from the hello): it waits for all T steps
    this.history = []; // [{t, label, p}] of ready answers
    this.rtts = [];
    this.first = null; // {t, ms} of the first ready answer
    this.done = false;
    this.setData({ t: "-1", label: "", firstReady: "", done: "false" });
    this.classifyEl.hidden = true;
    this.root.removeAttribute("data-classify-label");
    this.showError(null);
    this.paintNow();
  }

  setData({ t, label, firstReady, done }) {
    const d = this.root.dataset;
    if (t !== undefined) d.t = t;
    if (label !== undefined) d.label = label;
    if (firstReady !== undefined) d.firstReady = firstReady;
    if (done !== undefined) d.done = done;
  }

  hello(hello) {
    this.providerEl.textContent = providerName(hello.provider);
    this.streams = hello.streams;
    this.paint();
  }

  sending(t) {
    this.sendingT = t;
    this.paint();
  }

  // The data-* hooks change at once; what is drawn follows at the next animation frame, so a burst of
  // answers (interval 0) costs one paint, not one per step.
  step(answer, rttMs, sinceStartMs) {
    this.t = answer.t;
    this.rtts.push(rttMs);
    if (answer.ready) {
      if (this.first === null) {
        this.first = { t: answer.t, ms: sinceStartMs };
        this.setData({ firstReady: String(answer.t) });
      }
      this.answer = answer;
      const top = this.labels.indexOf(answer.label);
      this.history.push({ t: answer.t, label: answer.label, p: answer.probabilities[top] });
    }
    this.setData({ t: String(answer.t), label: answer.ready ? answer.label : "" });
    this.paint();
  }

  finish() {
    this.done = true;
    this.setData({ done: "true" });
    this.paint();
  }

  paint() {
    if (this.painting) return;
    this.painting = requestAnimationFrame(() => this.paintNow());
  }

  paintNow() {
    if (this.painting) cancelAnimationFrame(this.painting);
    this.painting = null;
    const answer = this.answer;
    const ready = answer !== null;
    const waiting = !ready && !this.streams && this.sendingT >= 0;
    this.root.classList.toggle("ready", ready);
    this.root.classList.toggle("is-waiting", waiting);
    this.root.classList.toggle("finished", this.done);
    if (ready) {
      const top = this.labels.indexOf(answer.label);
      this.big.textContent = answer.label;
      this.conf.textContent = `p = ${answer.probabilities[top].toFixed(2)}`;
      this.barEls.forEach(({ bar, fill }, j) => {
        fill.style.height = `${(100 * answer.probabilities[j]).toFixed(1)}%`;
        bar.classList.toggle("is-top", j === top);
      });
    } else {
      this.big.textContent = !this.seq ? "·" : waiting ? "…" : "–";
      this.conf.textContent = this.seq ? "" : "no input for this model";
      this.barEls.forEach(({ bar, fill }) => {
        fill.style.height = "0%";
        bar.classList.remove("is-top");
      });
    }
    this.waiting.hidden = !waiting;
    this.waitBar.firstChild.style.width = `${(100 * (this.t + 1)) / this.T}%`;
    const truth = this.truth === null ? -1 : this.labels.indexOf(this.truth);
    this.barEls.forEach(({ bar }, j) => bar.classList.toggle("is-truth", j === truth));
    this.firstEl.textContent = this.first ? `step ${this.first.t} · ${fmtMs(this.first.ms)}` : "–";
    this.rttEl.textContent = fmtMs(median(this.rtts));
    this.stepEl.textContent = this.t >= 0 ? `${this.t + 1} / ${this.T}` : `– / ${this.T}`;
    const highlight = this.done || this.sendingT < 0 ? -1 : this.sendingT;
    renderSequence(this.mini, this.seq, this.shape || [1], highlight, this.kind.accent);
    this.drawChart();
  }

  showError(message) {
    this.errorEl.hidden = !message;
    this.errorEl.textContent = message || "";
    this.root.classList.toggle("errored", Boolean(message));
    this.root.dataset.error = message || "";
  }

  showClassify(result, roundTripMs) {
    const p = result.predictions[0];
    const top = this.labels.indexOf(p.label);
    this.classifyEl.hidden = false;
    this.classifyEl.replaceChildren(
      el("span", { class: "k", text: "classify" }),
      el("b", { text: p.label }),
      el("span", { text: ` p = ${p.probabilities[top].toFixed(2)}` }),
      el("span", { class: "sep", text: "·" }),
      el("span", { text: `${fmtMs(result.latency_ms)} in the server, ${fmtMs(roundTripMs)} round trip` }),
    );
    this.root.dataset.classifyLabel = p.label;
  }

  drawChart() {
    const W = 300, H = 70, pad = 6;
    const T = this.T;
    const X = (t) => (T > 1 ? (t / (T - 1)) * (W - 2 * pad) + pad : W / 2);
    const Y = (p) => H - pad - p * (H - 2 * pad - 10);
    const noAnswer = (x, width) => {
      const rect = svg("rect", { x, y: Y(1), width, height: Y(0) - Y(1), class: "no-answer" });
      if (width < 120) return [rect];
      const text = svg("text", { x: x + width / 2, y: (Y(0) + Y(1)) / 2 + 4, class: "no-answer-label" });
      text.textContent = this.first ? `no answer before step ${this.first.t}` : "no answer yet";
      return [rect, text];
    };
    const nodes = [];
    nodes.push(svg("line", { x1: pad, x2: W - pad, y1: Y(1), y2: Y(1), class: "grid" }));
    nodes.push(svg("line", { x1: pad, x2: W - pad, y1: Y(0.5), y2: Y(0.5), class: "grid" }));
    nodes.push(svg("line", { x1: pad, x2: W - pad, y1: Y(0), y2: Y(0), class: "axis" }));
    if (this.t >= 0 && !this.history.length) {
      // nothing ready yet: the span of steps sent without an answer
      nodes.push(...noAnswer(pad, Math.max(2, X(this.t) - pad)));
    }
    if (this.history.length) {
      const first = this.history[0].t;
      if (first > 0) nodes.push(...noAnswer(pad, X(first) - pad));
      const pts = this.history.map((h) => `${X(h.t).toFixed(1)},${Y(h.p).toFixed(1)}`);
      if (this.history.length > 1) {
        nodes.push(svg("polygon", { points: `${X(first)},${Y(0)} ${pts.join(" ")} ${X(this.history.at(-1).t)},${Y(0)}`, class: "area" }));
        nodes.push(svg("polyline", { points: pts.join(" "), class: "line" }));
      }
      let last = null;
      for (const h of this.history) {
        const changed = h.label !== last;
        nodes.push(svg("circle", { cx: X(h.t), cy: Y(h.p), r: changed ? 2.8 : 1.6, class: changed ? "dot change" : "dot" }));
        if (changed) {
          const text = svg("text", { x: X(h.t), y: Math.max(9, Y(h.p) - 5), class: "change-label" });
          text.textContent = h.label;
          nodes.push(text);
        }
        last = h.label;
      }
    }
    this.chart.replaceChildren(...nodes);
  }
}
