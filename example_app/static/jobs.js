// The jobs page: each job gets a progress bar fed by an EventSource on the job's channel.
"use strict";

(() => {
  const list = document.getElementById("jobs");
  const form = document.getElementById("start-job");

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const response = await fetch(form.action, { method: "POST" });
    const { job, stream } = await response.json();

    const item = document.createElement("li");
    item.className = "job";
    item.dataset.state = "queued";
    item.innerHTML = `<code></code><div class="bar"><div class="fill"></div></div>
      <span class="percent">0 %</span><span class="state">queued</span>`;
    item.querySelector("code").textContent = job;
    list.prepend(item);

    const source = new EventSource(stream);
    source.addEventListener("progress", (event) => {
      const { percent, state } = JSON.parse(event.data);
      item.querySelector(".fill").style.width = `${percent}%`;
      item.querySelector(".percent").textContent = `${percent} %`;
      item.querySelector(".state").textContent = state;
      item.dataset.state = state;
      if (state === "done") source.close();
    });
    source.addEventListener("sse.missed", () => {
      item.dataset.state = "lost";
      item.querySelector(".state").textContent = "lost (the server restarted)";
      source.close();
    });
  });
})();
