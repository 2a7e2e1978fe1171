// The npm `eventsource` package (v4: v5 needs Node 22.12): node read_eventsource.mjs URL TYPES_JSON
// Prints one JSON line per open and per event, as support/readers does; exits after `done`.
// EventSource dispatches each event to the listeners of its type: TYPES_JSON lists every type
// the test publishes, and the `sse.*` ones the server may send.
import { EventSource } from "eventsource";

const [url, typesJson] = process.argv.slice(2);
const emit = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");
// v5 unrefs its reconnect timer (v4 does not): a process with nothing else to do would exit at
// the first disconnect instead of reconnecting. A service has its server to keep it alive; this
// has this.
const alive = setInterval(() => {}, 60_000);
const source = new EventSource(url);
source.onopen = () => emit({ open: true });
for (const type of new Set(["message", ...JSON.parse(typesJson)])) {
  source.addEventListener(type, (event) => {
    emit({ type: event.type, data: event.data, id: event.lastEventId, retry: null });
    if (event.type === "done") {
      source.close();
      clearInterval(alive);
    }
  });
}
