// The chat page: POST a prompt and render the answer token by token as the events arrive.
// EventSource cannot POST: this uses the extension's fetch-based client (sse-client.js).
// The answer is resumable (sse.response(..., resumable=True)): it opens with an sse.stream
// event naming its resume URL, which the page keeps in sessionStorage. A dropped connection
// resumes there by itself; after a reload the page reads the answer again from that URL,
// from its first token: the generator is not run a second time.
import { connect } from "sse-client";

const PENDING = "chat.pending";
const form = document.getElementById("ask");
const transcript = document.getElementById("transcript");

function say(who, text) {
  const bubble = document.createElement("div");
  bubble.className = "bubble " + who;
  bubble.textContent = text;
  transcript.append(bubble);
  return bubble;
}

/** Render one answer from `url` (a POST of `prompt`, or a resume URL after a reload). */
function answer(prompt, url, request = {}) {
  form.elements.prompt.disabled = true;
  say("user", prompt);
  const bubble = say("bot streaming", "");
  bubble.dataset.tokens = 0;

  const stream = connect(url, {
    ...request,
    onEvent(event) {
      if (event.type === "sse.stream") {
        sessionStorage.setItem(PENDING, JSON.stringify({ prompt, url: JSON.parse(event.data).url }));
      } else if (event.type === "token") {
        bubble.textContent += event.data;
        bubble.dataset.tokens = Number(bubble.dataset.tokens) + 1;
      } else if (event.type === "sse.end") {
        bubble.classList.add("done");
      } else if (event.type === "sse.error") {
        bubble.classList.add("failed");
        bubble.textContent += ` [${JSON.parse(event.data).error}]`;
      }
    },
    onError(error) {
      // Before sse.stream named a resume URL, asking again would run the model again: stop.
      // After it, the client resumes there by itself (retryIn says when), unless it stopped.
      if (stream.resumeUrl && error.retryIn !== undefined) return;
      stream.close();
      if (!bubble.classList.contains("done")) {
        bubble.classList.add("failed");
        bubble.textContent += ` [${error.message}]`;
      }
    },
  });
  // The client closes itself after sse.end or sse.error, or onError closed it.
  stream.closed.then(() => {
    sessionStorage.removeItem(PENDING);
    bubble.classList.remove("streaming");
    form.elements.prompt.disabled = false;
    form.elements.prompt.focus();
  });
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const prompt = form.elements.prompt.value;
  form.reset();
  answer(prompt, form.action, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt }),
  });
});

// A reload in the middle of an answer: read it again from its resume URL.
const pending = JSON.parse(sessionStorage.getItem(PENDING) || "null");
if (pending) answer(pending.prompt, pending.url);
