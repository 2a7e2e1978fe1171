// The notifications page: a form that sends one, and the inbox that live.js keeps.
"use strict";

(() => {
  const list = document.getElementById("inbox");

  function render() {
    const items = live.inbox.items().reverse();
    list.replaceChildren(...items.map((note) => {
      const item = document.createElement("li");
      if (!note.read) item.className = "unread";
      const who = document.createElement("strong");
      who.textContent = note.from;
      const time = document.createElement("time");
      time.textContent = new Date(note.at).toLocaleTimeString();
      item.append(time, " ", who, " ", note.text);
      return item;
    }));
    if (!items.length) {
      list.innerHTML = '<li class="empty">Nothing yet. Ask someone to send you one.</li>';
    }
  }
  document.addEventListener("inbox", render);
  render();

  document.getElementById("mark-read").addEventListener("click", () => {
    live.inbox.save(live.inbox.items().map((note) => ({ ...note, read: true })));
  });

  const form = document.getElementById("notify");
  const status = document.getElementById("notify-status");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const response = await fetch(form.action, { method: "POST", body: new FormData(form) });
    const to = form.elements.to.selectedOptions[0].textContent;
    status.textContent = response.ok ? `Sent to ${to}.` : (await response.json()).error;
    if (response.ok) form.elements.text.value = "";
  });
})();
