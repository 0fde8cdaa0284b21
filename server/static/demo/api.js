// The public psn-serve API as the page uses it: JSON over HTTP and one WebSocket per stream.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    return this.status ? `${this.status} ${this.code}: ${this.message}` : this.message;
  }
}

export class Api {
  constructor(key) {
    this.key = key || "";
  }

  headers(extra = {}) {
    return this.key ? { ...extra, "X-API-Key": this.key } : extra;
  }

  async json(path, { method = "GET", body } = {}) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: this.headers(body === undefined ? {} : { "Content-Type": "application/json" }),
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(0, "network", `cannot reach the server (${e.message})`);
    }
    let doc = null;
    try {
      doc = await response.json();
    } catch {
      doc = null;
    }
    if (!response.ok) {
      const err = doc && doc.error;
      const message = err && typeof err === "object" ? err.message : err || response.statusText;
      const code = err && typeof err === "object" ? err.code : "http_error";
      throw new ApiError(response.status, code, message);
    }
    return doc;
  }

  models() {
    return this.json("/v1/models");
  }
  server() {
    return this.json("/v2");
  }
  examples(name) {
    return this.json(`/v1/models/${encodeURIComponent(name)}/examples`);
  }
  example(name, i) {
    return this.json(`/v1/models/${encodeURIComponent(name)}/examples/${i}`);
  }
  classify(name, inputs) {
    return this.json(`/v1/models/${encodeURIComponent(name)}/classify`, {
      method: "POST",
      body: { inputs, return_logits: false },
    });
  }

  streamUrl(name) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = this.key ? `?api_key=${encodeURIComponent(this.key)}` : "";
    return `${scheme}//${location.host}/v1/models/${encodeURIComponent(name)}/stream${query}`;
  }

  // A stream: resolves once the hello has arrived; `step(values)` sends one timestep and resolves with the
  // answer (or rejects with the error event or the close reason).
  openStream(name) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.streamUrl(name));
      ws.binaryType = "arraybuffer";
      const stream = new Stream(ws);
      let greeted = false;
      ws.onmessage = (event) => {
        const doc = JSON.parse(event.data);
        if (!greeted) {
          greeted = true;
          if (doc.error) {
            reject(new ApiError(0, doc.error.code, doc.error.message));
            return;
          }
          stream.hello = doc;
          resolve(stream);
          return;
        }
        stream.deliver(doc);
      };
      ws.onclose = (event) => {
        const err = closeError(event);
        if (!greeted) {
          greeted = true;
          reject(err);
        }
        stream.closed(err);
      };
      ws.onerror = () => {}; // the close event that follows carries the code and the reason
    });
  }
}

function closeError(event) {
  const reason = event.reason || (event.code === 1006 ? "connection lost" : "closed");
  return new ApiError(event.code, "ws_close", `stream closed (${event.code}): ${reason}`);
}

class Stream {
  constructor(ws) {
    this.ws = ws;
    this.hello = null;
    this.waiting = null; // {resolve, reject} of the step in flight
    this.error = null;
  }

  step(values) {
    if (this.error) return Promise.reject(this.error);
    const frame = new DataView(new ArrayBuffer(4 * values.length));
    for (let i = 0; i < values.length; i++) frame.setFloat32(4 * i, values[i], true); // little-endian
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.ws.send(frame.buffer);
    });
  }

  deliver(doc) {
    const waiting = this.waiting;
    this.waiting = null;
    if (!waiting) return;
    if (doc.error) waiting.reject(new ApiError(0, doc.error.code, doc.error.message));
    else waiting.resolve(doc);
  }

  closed(err) {
    this.error = this.error || err;
    if (this.waiting) {
      this.waiting.reject(err);
      this.waiting = null;
    }
  }

  close() {
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "done");
  }
}
