// @microsoft/fetch-event-source: node read_fetch_event_source.mjs URL
// Prints one JSON line per open and per event, as support/readers does; exits after `done`.
import { fetchEventSource } from "@microsoft/fetch-event-source";

// The library is written for browsers: it schedules retries with window.setTimeout and, when
// it stops, calls document.removeEventListener (for its page-visibility handling, which
// openWhenHidden turns off). Node 20 has fetch, timers and EventTarget: give it those.
globalThis.window = globalThis;
globalThis.document = Object.assign(new EventTarget(), { hidden: false });

const [url] = process.argv.slice(2);
const emit = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");
const done = new AbortController();

// The library stops when a stream ends; its README reconnects by throwing from onclose and
// returning nothing from onerror (then it waits the `retry` the server sent).
class StreamEnded extends Error {}

await fetchEventSource(url, {
  signal: done.signal,
  openWhenHidden: true,
  fetch: globalThis.fetch,
  async onopen(response) {
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    emit({ open: true });
  },
  onmessage(message) {
    // Like EventSource, an event with no `event:` field is a "message".
    emit({ type: message.event || "message", data: message.data, id: message.id, retry: message.retry ?? null });
    if (message.event === "done") done.abort();
  },
  onclose() {
    throw new StreamEnded("the stream ended");
  },
  onerror(error) {
    if (!(error instanceof StreamEnded)) throw error;
  },
});
