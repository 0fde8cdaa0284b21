// Inputs: what one model is fed per step (its per-step shape), how a drawing becomes an MNIST-like
// digit, and how a sequence is drawn on a canvas with the step being sent highlighted.

const SIDE = 28; // MNIST
const BOX = 20; // MNIST fits each digit, stroke included, in a 20×20 box ...
const TARGET_COM = 14.0; // ... and moves its centre of mass (pixel-index weighted) to (14, 14)
const STROKE = 2.8; // pen width in pixels of the 28×28 grid (the bundled test digits' "1"s are ~3 wide)
const SUPERSAMPLE = 4; // rasterise at 112×112, average 4×4 blocks

export const prod = (shape) => shape.reduce((a, b) => a * b, 1);

/** The per-step input shape of a model: its manifest's input_shape, or [features]. */
export function stepShape(info) {
  return info.input_shape && info.input_shape.length ? info.input_shape.slice() : [info.features];
}

/** Sequential MNIST: each step is one 28-pixel column of a 28×28 image (T = 28). */
export function isColumns(shape, T) {
  return shape.length === 1 && shape[0] === SIDE && T === SIDE;
}

/** A 28×28 (or 1×28×28) image per step, repeated over the T steps. */
export function isFrames28(shape) {
  return (shape.length === 2 && shape[0] === SIDE && shape[1] === SIDE) ||
    (shape.length === 3 && shape[0] === 1 && shape[1] === SIDE && shape[2] === SIDE);
}

export function drawable(shape, T) {
  return isColumns(shape, T) || isFrames28(shape);
}

/** What one step of a model's input is, in words: {kind, step, group}. `step` finishes "streamed ...". */
export function inputKind(shape, T) {
  if (isColumns(shape, T)) return { kind: "columns", step: "one image column per step" };
  if (shape.length === 1 && shape[0] === 1) return { kind: "signal", step: "one value of a 1-D signal per step" };
  if (shape.length === 1) return { kind: "vector", step: `a vector of ${shape[0]} values per step` };
  if (shape.length === 3 && shape[0] === 2) return { kind: "events", step: "one event frame (ON and OFF) per step" };
  return { kind: "image", step: `the whole ${shape.join("×")} image at every step` };
}

/** A random input of the model's shape, [T][...shape] in [0, 1), the same for the same seed (a model
 * without examples still has something to stream). */
export function randomSequence(shape, T, seed) {
  let a = (seed + 1) * 0x9e3779b1;
  const next = () => {
    a = (a + 0x6d2b79f5) | 0; // mulberry32
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  const fill = (dims) => (dims.length ? Array.from({ length: dims[0] }, () => fill(dims.slice(1))) : next());
  return Array.from({ length: T }, () => fill(shape));
}

/** A 28×28 image (row-major Float32Array of 784) as the model's input: [T][...shape] nested arrays. */
export function sequenceFromImage(img, shape, T) {
  if (isColumns(shape, T)) {
    const seq = [];
    for (let t = 0; t < T; t++) {
      const column = new Array(SIDE);
      for (let r = 0; r < SIDE; r++) column[r] = img[r * SIDE + t]; // x[t][row] = image[row][t]
      seq.push(column);
    }
    return seq;
  }
  if (isFrames28(shape)) {
    const rows = [];
    for (let r = 0; r < SIDE; r++) rows.push(Array.from(img.subarray(r * SIDE, (r + 1) * SIDE)));
    const frame = shape.length === 3 ? [rows] : rows; // [1, 28, 28] or [28, 28]
    return Array.from({ length: T }, () => frame);
  }
  return null;
}

/** Strokes (lists of {x, y} in canvas pixels) -> a 28×28 digit preprocessed like MNIST: fitted in a
 * 20×20 box keeping the aspect ratio, pen of STROKE pixels, centre of mass at (14, 14), anti-aliased,
 * intensities in [0, 1] with the brightest pixel at 1. Returns null when nothing was drawn. */
export function preprocessStrokes(strokes) {
  const points = strokes.flat();
  if (!points.length) return null;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const p of points) {
    x0 = Math.min(x0, p.x); x1 = Math.max(x1, p.x);
    y0 = Math.min(y0, p.y); y1 = Math.max(y1, p.y);
  }
  const side = Math.max(x1 - x0, y1 - y0, 1e-6);
  const scale = (BOX - STROKE) / side; // the pen's width fills the rest of the box
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const place = (dx, dy) => (p) => [(p.x - cx) * scale + SIDE / 2 + dx, (p.y - cy) * scale + SIDE / 2 + dy];
  let img = rasterise(strokes, place(0, 0));
  const [mx, my] = centreOfMass(img);
  if (Number.isFinite(mx)) img = rasterise(strokes, place(TARGET_COM - mx, TARGET_COM - my));
  let peak = 0;
  for (const v of img) peak = Math.max(peak, v);
  if (peak > 0) for (let i = 0; i < img.length; i++) img[i] = Math.min(1, img[i] / peak);
  return img;
}

function rasterise(strokes, toGrid) {
  const n = SIDE * SUPERSAMPLE;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = n;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, n, n);
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineWidth = STROKE * SUPERSAMPLE;
  ctx.lineCap = ctx.lineJoin = "round";
  for (const stroke of strokes) {
    const pts = stroke.map((p) => toGrid(p).map((v) => v * SUPERSAMPLE));
    if (pts.length === 1) {
      ctx.beginPath();
      ctx.arc(pts[0][0], pts[0][1], ctx.lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(pts[0][0], pts[0][1]);
    for (const [x, y] of pts.slice(1)) ctx.lineTo(x, y);
    ctx.stroke();
  }
  const data = ctx.getImageData(0, 0, n, n).data;
  const img = new Float32Array(SIDE * SIDE);
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      img[Math.floor(y / SUPERSAMPLE) * SIDE + Math.floor(x / SUPERSAMPLE)] += data[4 * (y * n + x)] / 255;
    }
  }
  for (let i = 0; i < img.length; i++) img[i] /= SUPERSAMPLE * SUPERSAMPLE;
  return img;
}

function centreOfMass(img) {
  let m = 0, sx = 0, sy = 0;
  for (let r = 0; r < SIDE; r++) {
    for (let c = 0; c < SIDE; c++) {
      const v = img[r * SIDE + c];
      m += v; sx += v * c; sy += v * r;
    }
  }
  return [sx / m, sy / m];
}

// ---- drawing a sequence ------------------------------------------------------------------------------

const BG = [11, 16, 32];

function mix(v, lo, hi) {
  const a = Math.max(0, Math.min(1, (v - lo) / (hi - lo || 1)));
  return [BG[0] + (255 - BG[0]) * a, BG[1] + (255 - BG[1]) * a, BG[2] + (255 - BG[2]) * a];
}

function range(values) {
  let lo = 0, hi = 1e-6;
  for (const v of values) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  return [lo, hi];
}

/** Draw a model's input sequence [T][...shape]. `t` is the step being sent (-1: none): earlier steps are
 * shown bright, later ones dimmed, step t outlined in `accent`. */
export function renderSequence(canvas, seq, shape, t = -1, accent = "#3ee0a5") {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.fillStyle = `rgb(${BG.join(",")})`;
  ctx.fillRect(0, 0, W, H);
  if (!seq || !seq.length) return;
  const T = seq.length;
  if (shape.length === 1 && shape[0] === 1) return renderSignal(ctx, W, H, seq.map((s) => s[0]), t, accent);
  if (shape.length >= 2) return renderFrame(ctx, W, H, seq, shape, t, accent);
  // one value per pixel: x = step, y = feature (sequential MNIST: the digit itself)
  const F = shape[0];
  const [lo, hi] = range(seq.flat());
  const image = new ImageData(T, F);
  for (let s = 0; s < T; s++) {
    const dim = t >= 0 && s > t ? 0.28 : 1;
    for (let f = 0; f < F; f++) {
      const [r, g, b] = mix(seq[s][f] * dim + lo * (1 - dim), lo, hi);
      const o = 4 * (f * T + s);
      image.data[o] = r; image.data[o + 1] = g; image.data[o + 2] = b; image.data[o + 3] = 255;
    }
  }
  blit(ctx, image, W, H);
  if (t >= 0 && t < T) {
    const x = (t / T) * W, w = W / T;
    ctx.fillStyle = hexAlpha(accent, 0.28);
    ctx.fillRect(x, 0, w, H);
    ctx.strokeStyle = accent;
    ctx.lineWidth = Math.max(1.5, W / 140);
    ctx.strokeRect(x + 0.5, 0.5, w - 1, H - 1);
  }
}

function blit(ctx, image, W, H) {
  const off = document.createElement("canvas");
  off.width = image.width; off.height = image.height;
  off.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, W, H);
}

function renderSignal(ctx, W, H, values, t, accent) {
  const T = values.length;
  const [lo0, hi0] = [Math.min(...values), Math.max(...values)];
  const pad = (hi0 - lo0) * 0.12 || 1;
  const lo = lo0 - pad, hi = hi0 + pad;
  const X = (s) => ((s + 0.5) / T) * W, Y = (v) => H - ((v - lo) / (hi - lo)) * H;
  ctx.strokeStyle = "rgba(255,255,255,0.08)";
  ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(0, Y(0)); ctx.lineTo(W, Y(0)); ctx.stroke();
  const upto = t >= 0 ? t : T - 1;
  const line = (from, to, style, width) => {
    if (to < from) return;
    ctx.strokeStyle = style; ctx.lineWidth = width; ctx.lineJoin = "round";
    ctx.beginPath();
    for (let s = from; s <= to; s++) (s === from ? ctx.moveTo : ctx.lineTo).call(ctx, X(s), Y(values[s]));
    ctx.stroke();
  };
  line(Math.max(upto, 0), T - 1, "rgba(255,255,255,0.25)", Math.max(1.5, W / 150));
  line(0, upto, "#fff", Math.max(2, W / 110));
  if (t >= 0 && t < T) {
    ctx.fillStyle = hexAlpha(accent, 0.25);
    ctx.fillRect(X(t) - W / T / 2, 0, W / T, H);
    ctx.fillStyle = accent;
    ctx.beginPath(); ctx.arc(X(t), Y(values[t]), Math.max(3, W / 60), 0, 2 * Math.PI); ctx.fill();
  }
}

function renderFrame(ctx, W, H, seq, shape, t, accent) {
  // an image per step ([1, 28, 28], [3, 32, 32], event frames [2, H, W]): the frame being sent, or the
  // mean over all steps when none is (the image itself when it repeats, where the events were otherwise)
  const frame = t >= 0 ? seq[Math.min(seq.length - 1, t)] : meanFrame(seq);
  const channels = shape.length === 3 ? shape[0] : 1;
  const h = shape[shape.length - 2], w = shape[shape.length - 1];
  const at = (c, y, x) => (shape.length === 3 ? frame[c][y][x] : frame[y][x]);
  const [lo, hi] = range(frame.flat(3));
  const norm = (v) => Math.max(0, Math.min(1, (v - lo) / (hi - lo || 1)));
  const image = new ImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = 4 * (y * w + x);
      if (channels === 3) {
        for (let c = 0; c < 3; c++) image.data[o + c] = 255 * norm(at(c, y, x));
      } else if (channels === 2) { // events: ON green, OFF magenta, both white
        const on = norm(at(0, y, x)), off = norm(at(1, y, x));
        image.data[o] = BG[0] + (255 - BG[0]) * off;
        image.data[o + 1] = BG[1] + (255 - BG[1]) * on;
        image.data[o + 2] = BG[2] + (255 - BG[2]) * Math.max(on * 0.55, off);
      } else {
        const [r, g, b] = mix(at(0, y, x), lo, hi);
        image.data[o] = r; image.data[o + 1] = g; image.data[o + 2] = b;
      }
      image.data[o + 3] = 255;
    }
  }
  blit(ctx, image, W, H);
  if (t >= 0) {
    ctx.strokeStyle = accent;
    ctx.lineWidth = Math.max(2, W / 100);
    ctx.strokeRect(1, 1, W - 2, H - 2);
  }
}

function meanFrame(seq) {
  const add = (a, b) => (Array.isArray(a) ? a.map((v, i) => add(v, b[i])) : a + b);
  const scale = (a, k) => (Array.isArray(a) ? a.map((v) => scale(v, k)) : a * k);
  return scale(seq.reduce(add), 1 / seq.length);
}

export function hexAlpha(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
}
