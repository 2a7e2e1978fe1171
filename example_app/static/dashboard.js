// The dashboard: an SVG line chart of the last 60 `metric` samples, and the broadcast feed.
"use strict";

(() => {
  const chart = document.getElementById("chart");
  const W = 640, H = 260, LEFT = 40, RIGHT = 12, TOP = 12, BOTTOM = 28, KEEP = 60;
  const x = (i) => LEFT + ((W - LEFT - RIGHT) * i) / (KEEP - 1);
  const y = (load) => TOP + ((H - TOP - BOTTOM) * (100 - load)) / 100;
  const samples = [];
  let received = 0;

  // Axes, drawn once: a line and a label every 25 %.
  const svg = (tag, attrs, text) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const grid = chart.querySelector(".grid-lines");
  for (let load = 0; load <= 100; load += 25) {
    grid.append(svg("line", { x1: LEFT, x2: W - RIGHT, y1: y(load), y2: y(load) }));
    grid.append(svg("text", { x: LEFT - 8, y: y(load) + 4, "text-anchor": "end" }, `${load}%`));
  }
  grid.append(svg("text", { x: LEFT, y: H - 8 }, `${KEEP} samples ago`));
  grid.append(svg("text", { x: W - RIGHT, y: H - 8, "text-anchor": "end" }, "now"));

  function draw() {
    // The newest sample on the right edge, older ones to its left.
    const offset = KEEP - samples.length;
    const points = samples.map((s, i) => [x(offset + i), y(s.load)]);
    const line = points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ");
    chart.querySelector(".line").setAttribute("points", line);
    const [first, last] = [points[0], points[points.length - 1]];
    const area = `M${first[0]},${y(0)} L${line.replaceAll(" ", " L")} L${last[0]},${y(0)} Z`;
    chart.querySelector(".area").setAttribute("d", area);
    const dot = chart.querySelector(".dot");
    dot.setAttribute("cx", last[0]);
    dot.setAttribute("cy", last[1]);
  }

  live.on("metric", (sample) => {
    samples.push(sample);
    if (samples.length > KEEP) samples.shift();
    received += 1;
    chart.dataset.received = received;
    draw();
    document.getElementById("load-now").textContent = `${sample.load.toFixed(1)} %`;
    document.getElementById("samples").textContent = received;
    document.getElementById("streams").textContent = sample.streams;
  });

  // The broadcast feed: `message` events on channel `sse`, from this form or POST /publish.
  const feed = document.getElementById("messages");
  live.on("message", (data) => {
    feed.querySelector(".empty")?.remove();
    const item = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString();
    item.append(time, " ", data.message);
    feed.prepend(item);
    while (feed.children.length > 8) feed.lastElementChild.remove();
  });

  // The raw events, newest first; a run of metric samples shares one row.
  const log = document.querySelector("#event-log tbody");
  for (const name of ["metric", "message", "notification", "sse.missed"]) {
    live.on(name, (data, event) => {
      const top = log.rows[0];
      const again = top && name === "metric" && top.dataset.event === "metric";
      const row = again ? top : log.insertRow(0);
      row.dataset.event = name;
      row.dataset.count = again ? Number(row.dataset.count) + 1 : 1;
      const label = row.dataset.count > 1 ? `${name} \u00d7${row.dataset.count}` : name;
      row.replaceChildren();
      for (const text of [new Date().toLocaleTimeString(), label, event.lastEventId, event.data]) {
        row.insertCell().textContent = text;
      }
      while (log.rows.length > 6) log.deleteRow(-1);
    });
  }

  document.getElementById("broadcast").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    const response = await fetch(form.action, { method: "POST", body: new FormData(form) });
    if (response.ok) form.reset();
    else live.toast((await response.json()).error, "warn");
  });
})();
