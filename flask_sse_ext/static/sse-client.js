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
 *
 * Credentials that expire: with `getCredential`, the client asks the app for a token or a
 * ticket before every attempt, asks once more after a 401, and after the server's `sse.reauth`
 * (the credential expired) reconnects at once with a fresh one, resuming with `Last-Event-ID`.
 * Tabs: `share: true` gives every tab of the origin one stream (`connectShared`, below).
 *
 * Long polling: a proxy that buffers whole responses delivers nothing of a stream. When a GET
 * stream delivers no byte (not even the opening `retry:` line) within `pollAfter` ms, the
 * client polls instead (`?poll=1`: each answer ends with the events after `Last-Event-ID`,
 * or the first new ones, or the cursor alone after a while) and asks again at once, with the
 * same ids, so nothing is lost or repeated; after `streamAgainAfter` ms it tries a stream
 * again. `conn.polling` says which it is doing.
 */

export const CONNECTING = 0, OPEN = 1, CLOSED = 2;
const EVENT_STREAM = /^\s*text\/event-stream\s*(;|$)/i;

/** @typedef {{type: string, data: string, lastEventId: string}} SSEEvent */

/**
 * An incremental `text/event-stream` parser. Chunks (strings, or bytes as Uint8Array) may split
 * lines, CRLF pairs and UTF-8 sequences anywhere. One leading BOM is dropped; an event the
 * input stops in the middle of is never dispatched.
 * `onId` hears of a last event id set without an event: a dispatch without data, or the
 * `:cursor <id>` comment a multi-channel stream opens with.
 * @param {{onEvent?: (e: SSEEvent) => void, onRetry?: (ms: number) => void, onId?: (id: string) => void, lastEventId?: string}} [options]
 * @returns {{feed(chunk: string | Uint8Array): void, readonly lastEventId: string}}
 */
export function createParser({ onEvent, onRetry, onId, lastEventId = "" } = {}) {
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
      } else onId?.(lastEventId);
      type = "";
      return;
    }
    const colon = text.indexOf(":");
    if (colon === 0) {
      // A comment; `:cursor <id>` is the opening cursor of a multi-channel stream (the server
      // sends it as a comment so that no other client sees an event).
      if (text.startsWith(":cursor ") && !text.includes("\0")) {
        lastEventId = idBuffer = text.slice(8);
        onId?.(lastEventId);
      }
      return;
    }
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
 * @param {(info: {reason: string, channels: string[]}) => Promise<Credential> | Credential} [options.getCredential]
 *   called before every attempt (reason "open", "reconnect", "reauth" after the server's
 *   `sse.reauth`, "unauthorized" after a 401) for the credential to send: a token string
 *   (sent as `Authorization: Bearer`) or `{headers, params}` (`{params: {ticket}}` adds
 *   `?ticket=`). Without it, `sse.reauth` stops the client with an error that says so.
 * @param {boolean} [options.share=false] share one stream among the tabs of this origin
 *   (see `connectShared`)
 * @param {(id: string) => void} [options.onId] an id-only dispatch set the last event id
 * @param {number} [options.pollAfter=4000] ms without a byte of a new stream before the client
 *   falls back to long polling (0: never)
 * @param {number} [options.streamAgainAfter=60000] ms of polling before it tries a stream again
 * @returns {{readyState: number, lastEventId: string, closed: Promise<void>, close(): void,
 *   polling: boolean, streamId?: string, resumeUrl?: string}}
 *   polling is true while the client long-polls instead of streaming (see above);
 *   readyState is CONNECTING (also while waiting to reconnect), OPEN or CLOSED; a resumable
 *   stream (`sse.response(..., resumable=True)`) sets streamId and resumeUrl from its
 *   `sse.stream` event, and every reconnection GETs resumeUrl with `Last-Event-ID`
 */
export function connect(url, options = {}) {
  if (options.share) return connectShared(url, options);
  const { method = "GET", headers = {}, body, credentials = "same-origin", signal } = options;
  const { onEvent, onOpen, onError, retry = 1000, maxRetry = 30000 } = options;
  const { getCredential, onId, pollAfter = 4000, streamAgainAfter = 60000 } = options;
  // `opening` names, to the server, where this client's first stream started (it has no
  // cursor yet): a proxy that holds that stream back holds its ids too, and the first poll
  // resumes from there with the same token.
  const opening = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  let reason = "open", reauth = false, pollingSince = 0;
  const abort = new AbortController();
  let base = retry, attempts = 0, timer, wake, resolveClosed;
  const conn = {
    readyState: CONNECTING,
    polling: false,
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
    let dest = conn.resumeUrl || url;
    const canPoll = pollAfter > 0 && !conn.resumeUrl && method.toUpperCase() === "GET" && body == null;
    if (conn.polling && Date.now() - pollingSince > streamAgainAfter) conn.polling = false;
    const polling = canPoll && conn.polling;
    if (canPoll && (polling || !conn.lastEventId)) {
      const pollUrl = new URL(dest, globalThis.location?.href);
      if (polling) pollUrl.searchParams.set("poll", "1");
      if (!conn.lastEventId) pollUrl.searchParams.set("opening", opening);
      dest = pollUrl.href;
    }
    const target = getCredential ? await withCredential(dest, sent, getCredential, reason) : dest;
    if (conn.readyState === CLOSED) return;
    // A stream that delivers no byte within pollAfter is held by something on the way.
    const mine = new AbortController();
    const cancel = () => mine.abort();
    abort.signal.addEventListener("abort", cancel, { once: true });
    let stalled = false;
    const watchdog = canPoll && !polling ? setTimeout(() => { stalled = true; mine.abort(); }, pollAfter) : 0;
    try {
      return await request(target, sent, mine.signal, polling, watchdog);
    } catch (err) {
      if (!stalled) throw err;
      if (!conn.polling) pollingSince = Date.now();
      conn.polling = true;
      return { message: `No byte of the stream within ${pollAfter} ms: long polling`, polled: true };
    } finally {
      clearTimeout(watchdog);
      abort.signal.removeEventListener("abort", cancel);
    }
  }

  async function request(target, sent, attemptSignal, polling, watchdog) {
    const response = await fetch(target, {
      method: conn.resumeUrl ? "GET" : method, headers: sent, body: conn.resumeUrl ? undefined : body,
      credentials, cache: "no-store", signal: attemptSignal,
    });
    const { status } = response;
    if (status === 204) return stop();
    if (status === 429) {
      response.body?.cancel().catch(() => {});
      const seconds = Number(response.headers.get("Retry-After"));
      return { message: "HTTP 429", status, wait: seconds > 0 ? seconds * 1000 : 0 };
    }
    if (status === 401 && getCredential && reason !== "unauthorized") {
      response.body?.cancel().catch(() => {});
      return { message: "HTTP 401", status, again: "unauthorized" }; // once, with a fresh credential
    }
    if (status >= 400 && status < 500) return stop(`HTTP ${status}`, status);
    if (!response.ok) {
      response.body?.cancel().catch(() => {});
      return { message: `HTTP ${status}`, status };
    }
    const contentType = response.headers.get("Content-Type") || "none";
    if (!EVENT_STREAM.test(contentType)) return stop(`Content-Type ${contentType}`, status);
    const again = polling && conn.readyState === OPEN; // one more poll of an open connection
    conn.readyState = OPEN;
    attempts = 0;
    if (!again) call(onOpen, response);
    let delivered = false; // an event or a cursor: a poll that brings neither backs off
    const reader = response.body.getReader();
    const parser = createParser({
      lastEventId: conn.lastEventId,
      onRetry: (ms) => (base = ms),
      onId: (id) => { delivered = true; if (conn.readyState !== CLOSED) call(onId, id); },
      onEvent: (event) => {
        delivered = true;
        if (conn.readyState === CLOSED || reauth) return;
        conn.lastEventId = event.lastEventId;
        if (event.type === "sse.stream") resumable(event);
        call(onEvent, event);
        if (event.type === "sse.end" || event.type === "sse.error") conn.close();
        if (event.type === "sse.reauth") { reauth = true; reader.cancel().catch(() => {}); }
      },
    });
    for (;;) {
      const { done, value } = await reader.read();
      clearTimeout(watchdog);
      if (done && polling && delivered && conn.readyState !== CLOSED && !reauth) return { polled: true };
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
      if (reauth) {
        reauth = false;
        conn.readyState = CONNECTING;
        // sse.reauth carries no id: Last-Event-ID still resumes after the last event.
        if (!getCredential) return stop("The credential expired (sse.reauth) and no getCredential renews it", 401);
        reason = "reauth";
        continue;
      }
      reason = failure.again || "reconnect";
      if (failure.polled) {
        // The next poll (or the first after a stalled stream) goes out at once.
        if (failure.message) report(failure.message, failure.status, 0);
        continue;
      }
      if (failure.again) {
        conn.readyState = CONNECTING;
        report(failure.message, failure.status, 0);
        continue;
      }
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

/** Asks the app for a credential and puts it on the request: returns the URL to fetch. */
async function withCredential(url, headers, getCredential, reason) {
  const target = new URL(url, location.href);
  const channels = target.searchParams.getAll("channel");
  const credential = await getCredential({ reason, channels });
  if (typeof credential === "string") {
    headers.set("Authorization", "Bearer " + credential);
    return target;
  }
  new Headers(credential?.headers || {}).forEach((value, name) => headers.set(name, value));
  for (const [name, value] of Object.entries(credential?.params || {})) target.searchParams.set(name, value);
  return target;
}

// -- Tab sharing ------------------------------------------------------------------------------

/**
 * One stream for every tab of this origin (`connect(url, {share: true, ...})`): the tabs elect
 * a leader with a Web Lock named after the stream URL (without its channels); the leader holds
 * one stream for the union of the channels the tabs ask for and passes each event on through
 * a `BroadcastChannel`, and each tab hands its `onEvent` only the events of its own channels.
 * When the leader tab closes (or the browser freezes it), the next tab in the lock's queue
 * takes over at once and resumes from the last cursor every tab saw, with `Last-Event-ID`; each
 * tab drops an event it already has, so none is lost or repeated. A tab that asks for a
 * channel the stream lacks makes the leader reopen it for the larger union, resuming the
 * others. If the server refuses the larger union (a 4xx: a channel the leader's credential may
 * not read), the leader reopens the last union that worked and only the tab that asked gets
 * the error. The leader's options (headers, `getCredential`) open the stream: share among tabs
 * of one user. Without Web Locks or BroadcastChannel (or for another method than GET), each
 * tab opens its own stream.
 * @returns {{readyState: number, lastEventId: string, closed: Promise<void>, close(): void, readonly leader: boolean}}
 */
export function connectShared(url, options = {}) {
  const solo = { ...options, share: false };
  if (typeof BroadcastChannel !== "function" || !globalThis.navigator?.locks?.request) return connect(url, solo);
  if ((options.method || "GET").toUpperCase() !== "GET" || options.body != null) return connect(url, solo);
  const target = new URL(url, location.href);
  const mine = target.searchParams.getAll("channel");
  if (!mine.length) mine.push("sse"); // the server's default channel
  target.searchParams.delete("channel");
  const name = "flask-sse-ext:" + target.href;
  const { onEvent, onOpen, onError, signal } = options;
  const bus = new BroadcastChannel(name);
  /** This tab, for an error that is for it alone. */
  const tab = Math.random().toString(36).slice(2) + Date.now().toString(36);
  const seen = new Map(mine.map((channel) => [channel, new Set()]));
  /** What every tab knows of the shared stream: its channels and its last cursor. */
  const shared = { union: [], cursor: "" };
  let leading = null, release = null, queued = false, resolveClosed;

  const conn = {
    readyState: CONNECTING,
    lastEventId: "",
    closed: new Promise((resolve) => (resolveClosed = resolve)),
    get leader() { return leading !== null; },
    close() {
      if (conn.readyState === CLOSED) return;
      conn.readyState = CLOSED;
      abdicate();
      bus.close();
      signal?.removeEventListener("abort", conn.close);
      removeEventListener("pagehide", conn.close);
      document.removeEventListener("freeze", abdicate);
      document.removeEventListener("resume", campaign);
      resolveClosed();
    },
  };

  /** Hands one event to this tab if it is for one of its channels and new to it. */
  function deliver({ channels, key, event }) {
    if (conn.readyState === CLOSED) return;
    let fresh = false;
    for (const channel of channels) {
      const keys = seen.get(channel);
      if (!keys || keys.has(key)) continue;
      keys.add(key);
      if (keys.size > 1000) keys.delete(keys.values().next().value);
      fresh = true;
    }
    if (!fresh) return;
    conn.lastEventId = event.lastEventId;
    call(onEvent, event);
  }

  function note(union, cursor) { shared.union = union; shared.cursor = cursor; }

  bus.onmessage = ({ data: m }) => {
    if (m.t === "event") { note(m.union, m.cursor); deliver(m); }
    else if (m.t === "cursor") note(m.union, m.cursor);
    else if (m.t === "hello" && leading) leading.join(m.channels, m.tab);
    else if (m.t === "who") bus.postMessage({ t: "hello", channels: mine, tab });
    else if (m.t === "open") opened(m.channels);
    else if (m.t === "error" && (m.tab === undefined || m.tab === tab)) report(m);
  };

  /** The leader's stream opened: this tab is open once the stream carries all its channels
   * (before that, its events are not on it yet). */
  function opened(channels) {
    if (conn.readyState !== CONNECTING || !mine.every((c) => channels.includes(c))) return;
    conn.readyState = OPEN;
    call(onOpen, undefined);
  }

  /** The leader's stream failed: every tab hears it, and all stop when it stopped. */
  function report({ message, status, retryIn }) {
    if (conn.readyState === CLOSED) return;
    if (retryIn === undefined) conn.close();
    else conn.readyState = CONNECTING;
    call(onError, Object.assign(new Error(message), { status, retryIn }));
  }

  /** Leads: holds the one stream for the union of every tab's channels. */
  function lead() {
    let union = sorted([...shared.union, ...mine]), stream = null, timer;
    // The channels of the last stream that opened; the tabs that asked for channels beyond it
    // (tab -> channels); tabs to add one at a time after a wider union was refused.
    let good = shared.union.length ? union : null;
    const asked = new Map(), waiting = [];
    /** The stream on `channels` got a final 4xx: if tabs widened it, reopen the last union that
     * worked, and tell the tab that asked (several: add them again one at a time to learn
     * which). False when there is nothing to take back: every tab hears the error. */
    const shed = (channels, e) => {
      const base = good || sorted(mine);
      if (!asked.size || channels.join() === base.join()) return false;
      const tabs = [...asked];
      asked.clear();
      clearTimeout(timer);
      timer = null;
      union = base;
      if (tabs.length > 1) waiting.push(...tabs);
      else {
        const message = `${e.message}: the shared stream cannot add this tab's channels`;
        bus.postMessage({ t: "error", tab: tabs[0][0], message, status: e.status });
      }
      start();
      return true;
    };
    const start = () => {
      const channels = union; // this stream's: the union may grow while it runs
      const cursor = cursorFor(channels, shared.union, shared.cursor);
      note(channels, cursor);
      let previous = cursor;
      const address = new URL(target);
      for (const channel of channels) address.searchParams.append("channel", channel);
      const current = (stream = connect(address, {
        ...solo, lastEventId: cursor, signal: undefined,
        onId: (id) => {
          if (stream !== current) return;
          previous = id;
          note(channels, id);
          bus.postMessage({ t: "cursor", union: channels, cursor: id });
        },
        onOpen: () => {
          if (stream !== current) return;
          good = channels;
          for (const [from, wanted] of asked) if (wanted.every((c) => channels.includes(c))) asked.delete(from);
          opened(channels);
          bus.postMessage({ t: "open", channels });
          if (waiting.length && !timer) { const [from, wanted] = waiting.shift(); join(wanted, from); }
        },
        onError: (e) => {
          if (stream !== current) return;
          if (e.retryIn === undefined && e.status >= 400 && e.status < 500 && shed(channels, e)) return;
          const m = { t: "error", message: e.message, status: e.status, retryIn: e.retryIn };
          bus.postMessage(m);
          report(m);
        },
        onEvent: (event) => {
          if (stream !== current) return;
          const m = { t: "event", ...route(channels, previous, event), event, union: channels, cursor: event.lastEventId };
          previous = event.lastEventId;
          note(channels, previous);
          bus.postMessage(m);
          deliver(m);
        },
      }));
    };
    const join = (channels, from) => {
      if (from !== undefined && !(good && channels.every((c) => good.includes(c)))) asked.set(from, channels);
      const wider = sorted([...union, ...channels]);
      if (wider.length === union.length) {
        if (stream?.readyState === OPEN && !timer) bus.postMessage({ t: "open", channels: union });
        return;
      }
      union = wider;
      clearTimeout(timer); // tabs that open together cost one reconnection, not one each
      timer = setTimeout(() => { timer = null; stream?.close(); start(); }, 50);
    };
    leading = { join, stop() { clearTimeout(timer); stream?.close(); stream = null; } };
    bus.postMessage({ t: "who" });
    // Taking over: resume at once. The first leader waits for the other tabs' answers first,
    // so that tabs opened together start on one stream.
    if (shared.union.length) start();
    else timer = setTimeout(() => { timer = null; start(); }, 100);
  }

  function abdicate() {
    leading?.stop();
    leading = null;
    release?.();
    release = null;
  }

  /** Waits in the lock's queue (once) and leads when the lock is granted. */
  function campaign() {
    if (conn.readyState === CLOSED || queued) return;
    queued = true;
    navigator.locks.request(name, () => new Promise((resolve) => {
      release = () => { queued = false; resolve(); };
      if (conn.readyState === CLOSED) release();
      else lead();
    }));
  }

  if (signal?.aborted) { conn.close(); return conn; }
  signal?.addEventListener("abort", conn.close, { once: true });
  addEventListener("pagehide", conn.close);
  // A frozen leader would hold the lock and deliver nothing: it hands over first.
  document.addEventListener("freeze", abdicate);
  document.addEventListener("resume", campaign);
  bus.postMessage({ t: "hello", channels: mine, tab });
  campaign();
  return conn;
}

const sorted = (channels) => [...new Set(channels)].sort();

/** A compound cursor (`~` and one base-36 `ms[-seq]` token per channel) as positions; `_`
 * (a channel that starts from now) is null. */
function decodeCompound(text, count) {
  if (!text.startsWith("~")) return null;
  const tokens = text.slice(1).split(".");
  if (tokens.length !== count) return null;
  return tokens.map((token) => {
    if (token === "_") return null;
    const [ms, seq = "0"] = token.split("-");
    return [parseInt(ms, 36), parseInt(seq, 36)];
  });
}

/** Which channels an event of the union stream is for, and the key that tells it apart. */
function route(union, previous, event) {
  if (event.type === "sse.missed") {
    try { return { channels: JSON.parse(event.data).channels, key: "missed:" + event.lastEventId }; }
    catch { /* not ours: below */ }
  }
  if (union.length === 1) return { channels: union, key: event.lastEventId };
  const before = decodeCompound(previous || "", union.length);
  const after = decodeCompound(event.lastEventId, union.length);
  if (before && after) {
    // Each event moves exactly its own channel's position in the compound cursor.
    // A channel that started from now (null before) is not known to have moved.
    const moved = union.filter((_, i) => after[i] && before[i] && (after[i][0] !== before[i][0] || after[i][1] !== before[i][1]));
    if (moved.length === 1) {
      const i = union.indexOf(moved[0]);
      return { channels: moved, key: `${after[i][0]}-${after[i][1]}` };
    }
  }
  return { channels: union, key: event.lastEventId }; // the position is unknown: every tab gets it
}

/** The cursor for a stream on `union` from one on `before` that stood at `cursor`: known
 * positions carry over, a new channel starts from now (`_`); a position that cannot be told
 * (a publisher's own id) makes the cursor unknown, which the server reports as `sse.missed`. */
function cursorFor(union, before, cursor) {
  if (!cursor || !before.length) return "";
  if (union.join() === before.join()) return cursor;
  let positions;
  if (before.length === 1) {
    const match = /^(\d+)-(\d+)$/.exec(cursor);
    positions = match ? [[Number(match[1]), Number(match[2])]] : null;
  } else positions = decodeCompound(cursor, before.length);
  if (!positions) return "?";
  const at = new Map(before.map((channel, i) => [channel, positions[i]]));
  if (union.length === 1) {
    const position = at.get(union[0]);
    return position ? `${position[0]}-${position[1]}` : "";
  }
  return "~" + union.map((channel) => {
    const position = at.get(channel);
    if (!position) return "_";
    return position[0].toString(36) + (position[1] ? "-" + position[1].toString(36) : "");
  }).join(".");
}
