/**
 * sse-client.js: a Server-Sent Events client over `fetch`, for flask-sse-ext. An ES module with
 * no dependencies and no build step, served at `<SSE_URL_PREFIX>/static/sse-client.js`.
 *
 * Unlike `EventSource` it sends any method, headers and body (POST a prompt to `sse.response`,
 * send `Authorization: Bearer <token>` to the broadcast stream), backs off exponentially with
 * jitter, and reports the HTTP status of a refusal.
 *
 *     import {connect} from "/stream/static/sse-client.js";
 *     const conn = connect("/stream?channel=news", {
 *       headers: {Authorization: "Bearer " + token},
 *       onEvent: (e) => console.log(e.type, e.data, e.lastEventId),
 *       onError: (err) => console.warn(err.message, err.status, err.retryIn),
 *     });
 *     conn.close();  // or abort the `signal` given in the options
 *
 * Reconnection: after a network error, a 5xx answer or a stream that ends, the client waits
 * `min(maxRetry, base * 2 ** n) * r` ms, r random in [0.5, 1), then asks again with
 * `Last-Event-ID`. `base` is the `retry` option until the server sends `retry:`; n counts the
 * attempts since the last successful open. It stops for good (readyState CLOSED, `closed`
 * resolves) on a 204, on any 4xx, on a 2xx that is not `text/event-stream`, after the events
 * `sse.end` and `sse.error` (the last event of a direct stream, `sse.response`), on `close()`,
 * and when `signal` aborts. A `body` is sent again on every attempt: give a string, not a stream.
 *
 * The parser follows the WHATWG HTML standard, section 9.2 "Server-sent events", "Interpreting
 * an event stream", and is exported as `createParser` for other transports.
 */

export const CONNECTING = 0;
export const OPEN = 1;
export const CLOSED = 2;

/**
 * @typedef {object} SSEEvent
 * @property {string} type the `event:` field, or "message"
 * @property {string} data the `data:` lines joined with "\n"
 * @property {string} lastEventId the last event ID after this event
 */

/**
 * An incremental parser of `text/event-stream`: chunks may split lines, CRLF pairs and (as bytes)
 * UTF-8 sequences anywhere. One leading BOM is dropped; an unfinished event is never dispatched.
 * @param {object} [options]
 * @param {(event: SSEEvent) => void} [options.onEvent] called for every dispatched event
 * @param {(ms: number) => void} [options.onRetry] called for every valid `retry:` field
 * @param {string} [options.lastEventId=""] the initial last event ID
 * @returns {{feed(chunk: string | Uint8Array): void, readonly lastEventId: string}}
 */
export function createParser({ onEvent, onRetry, lastEventId = "" } = {}) {
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true }); // the BOM is handled below
  let pending = "", started = false, afterCR = false;
  let type = "", data = "", idBuffer = lastEventId;

  function dispatch() {
    lastEventId = idBuffer; // even when there is no data to dispatch
    if (data === "") {
      type = "";
      return;
    }
    const event = { type: type || "message", data: data.slice(0, -1), lastEventId };
    type = data = "";
    if (onEvent) onEvent(event);
  }

  function line(text) {
    if (text === "") return dispatch();
    const colon = text.indexOf(":");
    if (colon === 0) return; // a comment
    let name = text, value = "";
    if (colon > 0) {
      name = text.slice(0, colon);
      value = text.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
    }
    if (name === "data") data += value + "\n";
    else if (name === "event") type = value;
    else if (name === "id") {
      if (!value.includes("\0")) idBuffer = value;
    } else if (name === "retry") {
      if (/^[0-9]+$/.test(value) && onRetry) onRetry(parseInt(value, 10));
    } // any other field is ignored
  }

  return {
    get lastEventId() {
      return lastEventId;
    },
    feed(chunk) {
      let text = typeof chunk === "string" ? chunk : decoder.decode(chunk, { stream: true });
      if (!text) return;
      if (!started) {
        started = true;
        if (text[0] === "\uFEFF") text = text.slice(1);
      }
      if (afterCR && text[0] === "\n") text = text.slice(1); // the LF of a CRLF split in two
      afterCR = text.endsWith("\r");
      let start = 0;
      for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        if (c !== 13 && c !== 10) continue;
        line(pending + text.slice(start, i));
        pending = "";
        if (c === 13 && text.charCodeAt(i + 1) === 10) i++;
        start = i + 1;
      }
      pending += text.slice(start);
    },
  };
}

/** Calls a user callback; what it throws is reported without breaking the stream. */
function call(callback, arg) {
  try {
    if (callback) callback(arg);
  } catch (err) {
    setTimeout(() => {
      throw err;
    });
  }
}

/** Header values are byte strings: send the id's UTF-8 bytes, as EventSource does. */
const utf8Bytes = (text) => Array.from(new TextEncoder().encode(text), (b) => String.fromCharCode(b)).join("");

/**
 * Open an event stream and keep it open.
 * @param {string | URL} url
 * @param {object} [options]
 * @param {string} [options.method="GET"]
 * @param {HeadersInit} [options.headers] sent with every attempt (`Accept`, `Cache-Control` and
 *   `Last-Event-ID` are set by the client)
 * @param {BodyInit} [options.body] sent with every attempt
 * @param {RequestCredentials} [options.credentials="same-origin"] "include" sends cookies cross-origin
 * @param {string} [options.lastEventId] sent as `Last-Event-ID` from the first request on
 * @param {AbortSignal} [options.signal] aborting it closes the connection for good
 * @param {(event: SSEEvent) => void} [options.onEvent] every event, `sse.end` included
 * @param {(response: Response) => void} [options.onOpen] a stream opened
 * @param {(error: Error & {status?: number, retryIn?: number}) => void} [options.onError] an
 *   attempt failed or a stream ended: `status` is the HTTP status if there was one, `retryIn`
 *   the ms until the next attempt, undefined when the client has stopped
 * @param {number} [options.retry=1000] base reconnection delay (ms) until the server sends `retry:`
 * @param {number} [options.maxRetry=30000] the longest delay between attempts (ms)
 * @returns {{readyState: number, lastEventId: string, closed: Promise<void>, close(): void}}
 *   `readyState` is CONNECTING (also while waiting to reconnect), OPEN or CLOSED
 */
export function connect(url, options = {}) {
  const { method = "GET", headers = {}, body, credentials = "same-origin", signal } = options;
  const { onEvent, onOpen, onError, retry = 1000, maxRetry = 30000 } = options;
  const abort = new AbortController();
  let base = retry, attempts = 0, timer, wake, resolveClosed;
  const conn = {
    readyState: CONNECTING,
    lastEventId: options.lastEventId || "",
    closed: new Promise((resolve) => (resolveClosed = resolve)),
    close() {
      if (conn.readyState === CLOSED) return;
      conn.readyState = CLOSED;
      abort.abort();
      clearTimeout(timer);
      if (wake) wake();
      if (signal) signal.removeEventListener("abort", conn.close);
      resolveClosed();
    },
  };
  const report = (message, status, retryIn) => call(onError, Object.assign(new Error(message), { status, retryIn }));
  const stop = (message, status) => {
    conn.close();
    if (message) report(message, status, undefined);
  };

  async function attempt() {
    const request = new Headers(headers);
    request.set("Accept", "text/event-stream");
    request.set("Cache-Control", "no-cache");
    if (conn.lastEventId) request.set("Last-Event-ID", utf8Bytes(conn.lastEventId));
    const init = { method, headers: request, body, credentials, cache: "no-store", signal: abort.signal };
    const response = await fetch(url, init);
    const { status } = response;
    if (status === 204) return stop();
    if (status >= 400 && status < 500) return stop(`HTTP ${status}`, status);
    if (!response.ok) {
      response.body?.cancel().catch(() => {});
      return { message: `HTTP ${status}`, status };
    }
    const contentType = response.headers.get("Content-Type") || "";
    if (!/^\s*text\/event-stream\s*(;|$)/i.test(contentType)) {
      return stop(`Not an event stream: ${contentType || "no Content-Type"}`, status);
    }
    conn.readyState = OPEN;
    attempts = 0;
    call(onOpen, response);
    const parser = createParser({
      lastEventId: conn.lastEventId,
      onRetry: (ms) => (base = ms),
      onEvent: (event) => {
        if (conn.readyState === CLOSED) return;
        conn.lastEventId = event.lastEventId;
        call(onEvent, event);
        if (event.type === "sse.end" || event.type === "sse.error") conn.close();
      },
    });
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done || conn.readyState === CLOSED) break;
      parser.feed(value);
      if (conn.readyState !== CLOSED) conn.lastEventId = parser.lastEventId;
    }
    return { message: "The stream ended", status };
  }

  async function run() {
    while (conn.readyState !== CLOSED) {
      let failure;
      try {
        failure = await attempt();
      } catch (err) {
        failure = { message: (err && err.message) || String(err) };
      }
      if (conn.readyState === CLOSED) return;
      const delay = Math.round(Math.min(maxRetry, base * 2 ** attempts++) * (0.5 + Math.random() / 2));
      conn.readyState = CONNECTING;
      report(failure.message, failure.status, delay);
      if (conn.readyState === CLOSED) return;
      await new Promise((resolve) => {
        wake = resolve;
        timer = setTimeout(resolve, delay);
      });
    }
  }

  if (signal && signal.aborted) conn.close();
  else {
    if (signal) signal.addEventListener("abort", conn.close, { once: true });
    run();
  }
  return conn;
}
