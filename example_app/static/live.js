// The page's live connection, shared by every page (base.html loads it first).
//
// One EventSource on the channels the server chose (body[data-stream]). It shows its state
// (connecting, open, reconnecting) and the last event id. EventSource reconnects by itself and
// sends that id as Last-Event-ID, so the server replays what was missed; the id is also kept in
// sessionStorage, so the next page of this tab resumes where this one stopped (?last_event_id=).
// It keeps the signed-in user's inbox (in localStorage) and the unread badge.
"use strict";

const live = (() => {
  const url = document.body.dataset.stream;
  const user = document.body.dataset.user;
  const positionKey = "sse-position " + url;
  const inboxKey = "inbox " + user;
  const stateEl = document.getElementById("conn-state");
  const lastIdEl = document.getElementById("last-id");
  const badge = document.getElementById("unread");
  const states = [];  // every state shown, in order

  function show(state) {
    if (states[states.length - 1] === state) return;
    states.push(state);
    stateEl.textContent = state;
    stateEl.dataset.state = state;
  }

  const saved = sessionStorage.getItem(positionKey);
  const source = new EventSource(saved ? `${url}&last_event_id=${encodeURIComponent(saved)}` : url);
  show("connecting");
  source.onopen = () => show("open");
  source.onerror = () => show(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");

  // Calls handler(data, event) for each event of that name, after noting its id.
  function on(name, handler) {
    source.addEventListener(name, (e) => {
      if (e.lastEventId) {
        lastIdEl.textContent = e.lastEventId;
        sessionStorage.setItem(positionKey, e.lastEventId);
      }
      handler(JSON.parse(e.data), e);
    });
  }

  function toast(text, kind = "") {
    const item = document.createElement("div");
    item.className = "toast " + kind;
    item.textContent = text;
    document.getElementById("toasts").append(item);
    setTimeout(() => item.remove(), 5000);
  }

  // The inbox: notifications of the signed-in user, newest last, kept across pages.
  const inbox = {
    items: () => JSON.parse(localStorage.getItem(inboxKey) || "[]"),
    save(items) {
      localStorage.setItem(inboxKey, JSON.stringify(items.slice(-50)));
      changed();
    },
  };
  function changed() {
    const unread = inbox.items().filter((n) => !n.read).length;
    badge.textContent = unread;
    badge.hidden = unread === 0;
    document.dispatchEvent(new Event("inbox"));
  }
  window.addEventListener("storage", (e) => { if (e.key === inboxKey) changed(); });
  if (user) changed();

  // Ids of events this page does not use are noted too (a replay starts after the last one).
  for (const name of ["message", "metric"]) on(name, () => {});

  on("notification", (note) => {
    const items = inbox.items();
    if (items.some((n) => n.id === note.id)) return;  // already kept by another tab
    items.push({ ...note, read: false });
    inbox.save(items);
    if (!document.getElementById("inbox")) toast(`${note.from}: ${note.text}`);
  });

  // The server no longer had the events after our Last-Event-ID (it restarted, say).
  on("sse.missed", () => toast("Reconnected, but the events sent meanwhile are lost.", "warn"));

  return { on, toast, inbox, states, source };
})();
