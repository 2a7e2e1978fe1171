/**
 * sse-client.js: a Server-Sent Events client over `fetch` for flask-sse-ext, served at
 * `<SSE_URL_PREFIX>/static/sse-client.js`. An ES module: no dependencies, no build step.
 * Unlike `EventSource` it sends any method, headers and body (POST a prompt to `sse.response`,
 * `Authorization: Bearer <token>` to the stream), backs off with jitter, and reports statuses.
 *
 *     import {connect} from "/stream/static/sse-client.js";
 *     const conn = connect("/stream?channel=news", {
 *       headers: {Authorization: "Bearer " + token},
 *       onEvent: (e) => console.log(e.type, e.data, e.lastEventId),
 *     });
 *     conn.close();  // or abort the `signal` given in the options
 *
 * After a network error, a 5xx or a stream that ends, it waits `min(maxRetry, base * 2 ** n)`
 * ms times a random factor in [0.5, 1), then asks again with `Last-Event-ID`. `base` is the
 * `retry` option until the server sends `retry:`; n counts attempts since the last successful
 * open; after a 429 it waits at least `Retry-After`. It stops for good (readyState CLOSED,
 * `closed` resolves) on a 204, on any other 4xx, on a 2xx
 * that is not `text/event-stream`, after the event `sse.end` or `sse.error` (the last event of
 * a direct stream), on `close()`, and when `signal` aborts. `body` is sent on every attempt.
 * `createParser` is the parser: WHATWG HTML 9.2, "Interpreting an event stream".
 */

export const CONNECTING = 0, OPEN = 1, CLOSED = 2;
const EVENT_STREAM = /^\s*text\/event-stream\s*(;|$)/i;

/** @typedef {{type: string, data: string, lastEventId: string}} SSEEvent */

/**
 * An incremental `text/event-stream` parser. Chunks (strings, or bytes as Uint8Array) may split
 * lines, CRLF pairs and UTF-8 sequences anywhere. One leading BOM is dropped; an event the
 * input stops in the middle of is never dispatched.
 * @param {{onEvent?: (e: SSEEvent) => void, onRetry?: (ms: number) => void, lastEventId?: string}} [options]
 * @returns {{feed(chunk: string | Uint8Array): void, readonly lastEventId: string}}
 */
export function createParser({ onEvent, onRetry, lastEventId = "" } = {}) {
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true }); // the BOM is dropped below
  let pending = "", started = false, afterCR = false;
  let type = "", data = "", idBuffer = lastEventId;

  function line(text) {
    if (text === "") {
      lastEventId = idBuffer; // set by every dispatch, even one without data
      if (data !== "") {
        const event = { type: type || "message", data: data.slice(0, -1), lastEventId };
        data = "";
        onEvent?.(event);
      }
      type = "";
      return;
    }
    const colon = text.indexOf(":");
    if (colon === 0) return; // a comment
    const name = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (name === "data") data += value + "\n";
    else if (name === "event") type = value;
    else if (name === "id" && !value.includes("\0")) idBuffer = value;
    else if (name === "retry" && /^[0-9]+$/.test(value) && onRetry) onRetry(parseInt(value, 10));
  }

  return {
    get lastEventId() { return lastEventId; },
    feed(chunk) {
      let text = typeof chunk === "string" ? chunk : decoder.decode(chunk, { stream: true });
      if (!text) return;
      if (!started && text[0] === "\uFEFF") text = text.slice(1);
      started = true;
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

/** Calls a user callback; what it throws is rethrown apart, without breaking the stream. */
function call(callback, arg) {
  try { callback?.(arg); }
  catch (err) { setTimeout(() => { throw err; }); }
}

/** A header value is a byte string: send the id's UTF-8 bytes, as EventSource does. */
const utf8 = (text) => Array.from(new TextEncoder().encode(text), (b) => String.fromCharCode(b)).join("");

/**
 * Open an event stream and keep it open.
 * @param {string | URL} url
 * @param {object} [options]
 * @param {string} [options.method="GET"]
 * @param {HeadersInit} [options.headers] sent on every attempt, with `Accept`, `Cache-Control`
 *   and (once there is one) `Last-Event-ID` added
 * @param {BodyInit} [options.body] sent on every attempt: a string or a Blob, not a stream
 * @param {RequestCredentials} [options.credentials="same-origin"] "include": cookies cross-origin
 * @param {string} [options.lastEventId] sent as `Last-Event-ID` from the first request on
 * @param {AbortSignal} [options.signal] aborting it closes the connection for good
 * @param {(event: SSEEvent) => void} [options.onEvent] every event, `sse.end` included
 * @param {(response: Response) => void} [options.onOpen] a stream opened
 * @param {(error: Error & {status?: number, retryIn?: number}) => void} [options.onError] an
 *   attempt failed or a stream ended: `status` is the HTTP status if any, `retryIn` the delay
 *   (ms) before the next attempt, undefined when the client has stopped
 * @param {number} [options.retry=1000] base delay (ms) until the server sends `retry:`
 * @param {number} [options.maxRetry=30000] the longest delay between attempts (ms)
 * @returns {{readyState: number, lastEventId: string, closed: Promise<void>, close(): void,
 *   streamId?: string, resumeUrl?: string}}
 *   readyState is CONNECTING (also while waiting to reconnect), OPEN or CLOSED; a resumable
 *   stream (`sse.response(..., resumable=True)`) sets streamId and resumeUrl from its
 *   `sse.stream` event, and every reconnection GETs resumeUrl with `Last-Event-ID`
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
      wake?.();
      signal?.removeEventListener("abort", conn.close);
      resolveClosed();
    },
  };
  /** `sse.stream` names a resumable stream: {id, url}. Later attempts go to that URL. */
  const resumable = (event) => {
    try {
      const { id, url: resumeUrl } = JSON.parse(event.data);
      const base = new URL(url, globalThis.location?.href);
      Object.assign(conn, { streamId: id, resumeUrl: new URL(resumeUrl, base).href });
    } catch { /* not one of ours: nothing to resume */ }
  };
  const report = (message, status, retryIn) =>
    call(onError, Object.assign(new Error(message), { status, retryIn }));
  const stop = (message, status) => { conn.close(); if (message) report(message, status); };

  /** One request; resolves to why it is over, unless the client stopped. */
  async function attempt() {
    const sent = new Headers(headers);
    sent.set("Accept", "text/event-stream");
    sent.set("Cache-Control", "no-cache");
    if (conn.lastEventId) sent.set("Last-Event-ID", utf8(conn.lastEventId));
    // A resumable stream (`sse.stream`) is resumed at its own URL with a GET, never by
    // sending the request (a POST of a prompt) again.
    const response = await fetch(conn.resumeUrl || url, {
      method: conn.resumeUrl ? "GET" : method, headers: sent, body: conn.resumeUrl ? undefined : body,
      credentials, cache: "no-store", signal: abort.signal,
    });
    const { status } = response;
    if (status === 204) return stop();
    if (status === 429) {
      response.body?.cancel().catch(() => {});
      const seconds = Number(response.headers.get("Retry-After"));
      return { message: "HTTP 429", status, wait: seconds > 0 ? seconds * 1000 : 0 };
    }
    if (status >= 400 && status < 500) return stop(`HTTP ${status}`, status);
    if (!response.ok) {
      response.body?.cancel().catch(() => {});
      return { message: `HTTP ${status}`, status };
    }
    const contentType = response.headers.get("Content-Type") || "none";
    if (!EVENT_STREAM.test(contentType)) return stop(`Content-Type ${contentType}`, status);
    conn.readyState = OPEN;
    attempts = 0;
    call(onOpen, response);
    const parser = createParser({
      lastEventId: conn.lastEventId,
      onRetry: (ms) => (base = ms),
      onEvent: (event) => {
        if (conn.readyState === CLOSED) return;
        conn.lastEventId = event.lastEventId;
        if (event.type === "sse.stream") resumable(event);
        call(onEvent, event);
        if (event.type === "sse.end" || event.type === "sse.error") conn.close();
      },
    });
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done || conn.readyState === CLOSED) return { message: "The stream ended", status };
      parser.feed(value);
      if (conn.readyState !== CLOSED) conn.lastEventId = parser.lastEventId;
    }
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
      const ceiling = Math.min(maxRetry, base * 2 ** attempts++);
      const delay = Math.max(failure.wait || 0, Math.round(ceiling * (0.5 + Math.random() / 2)));
      conn.readyState = CONNECTING;
      report(failure.message, failure.status, delay);
      if (conn.readyState === CLOSED) return;
      await new Promise((resolve) => { wake = resolve; timer = setTimeout(resolve, delay); });
    }
  }

  if (signal?.aborted) conn.close();
  else { signal?.addEventListener("abort", conn.close, { once: true }); run(); }
  return conn;
}
