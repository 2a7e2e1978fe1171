// The Node.js/Express peer of bench/run.py: what a team would write instead of a Python SSE
// server. One ioredis subscriber per process, channel -> set of local responses; each event is
// framed once and written to every response (Express/Node add the HTTP/1.1 chunked framing).
// GET /stream?channel=NAME streams one channel; GET /ping answers {pid}.
// Usage: node server.js PORT REDIS_URL   (packages from package-lock.json: `npm ci`)
"use strict";

const express = require("express");
const Redis = require("ioredis");

const port = Number(process.argv[2]);
const redisUrl = process.argv[3];
const CHANNEL = /^[A-Za-z0-9_\-.:@/]{1,200}$/;

const subscriber = new Redis(redisUrl);
const channels = new Map(); // channel -> Set of responses
const subscribed = new Map(); // channel -> Promise of the SUBSCRIBE reply

subscriber.on("messageBuffer", (channel, payload) => {
  const clients = channels.get(channel.toString());
  if (!clients) return;
  const text = payload.toString();
  const frame = text.includes("\n") || text.includes("\r")
    ? text.split(/\r\n|\r|\n/).map((line) => "data: " + line + "\n").join("") + "\n"
    : "data: " + text + "\n\n";
  for (const res of clients) res.write(frame);
});

function attach(channel, res) {
  let clients = channels.get(channel);
  if (!clients) {
    clients = new Set();
    channels.set(channel, clients);
    subscribed.set(channel, subscriber.subscribe(channel));
  }
  clients.add(res);
  return subscribed.get(channel);
}

function detach(channel, res) {
  const clients = channels.get(channel);
  if (!clients) return;
  clients.delete(res);
  if (clients.size === 0) {
    channels.delete(channel);
    subscribed.delete(channel);
    subscriber.unsubscribe(channel);
  }
}

const app = express();
app.disable("x-powered-by");
app.disable("etag");

app.get("/ping", (req, res) => res.json({ pid: process.pid }));

app.get("/stream", async (req, res) => {
  const channel = typeof req.query.channel === "string" ? req.query.channel : "sse";
  if (!CHANNEL.test(channel)) return res.status(400).json({ error: "bad channel" });
  req.socket.setNoDelay(true);
  req.socket.setTimeout(0);
  res.on("close", () => detach(channel, res));
  await attach(channel, res); // headers go out once Redis confirmed the subscription
  res.writeHead(200, {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
  });
  res.write("retry: 3000\n\n");
});

setInterval(() => {
  for (const clients of channels.values()) for (const res of clients) res.write(":\n\n");
}, 15000).unref();

const server = app.listen(port, "127.0.0.1", 4096);
server.keepAliveTimeout = 0;
server.requestTimeout = 0;
server.headersTimeout = 0;
server.maxConnections = 100000;
