// The chat page: POST a prompt and render the answer token by token as the events arrive.
// EventSource cannot POST: this uses the extension's fetch-based client (sse-client.js).
import { connect } from "sse-client";

const form = document.getElementById("ask");
const transcript = document.getElementById("transcript");

function say(who, text) {
  const bubble = document.createElement("div");
  bubble.className = "bubble " + who;
  bubble.textContent = text;
  transcript.append(bubble);
  return bubble;
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const prompt = form.elements.prompt.value;
  form.reset();
  form.elements.prompt.disabled = true;
  say("user", prompt);
  const answer = say("bot streaming", "");
  answer.dataset.tokens = 0;

  const stream = connect(form.action, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt }),
    onEvent(event) {
      if (event.type === "token") {
        answer.textContent += event.data;
        answer.dataset.tokens = Number(answer.dataset.tokens) + 1;
      } else if (event.type === "sse.end") {
        answer.classList.add("done");
      } else if (event.type === "sse.error") {
        answer.classList.add("failed");
        answer.textContent += ` [${JSON.parse(event.data).error}]`;
      }
    },
    onError(error) {
      // A POST is not resumable: asking again would start the answer over. Stop instead.
      stream.close();
      if (!answer.classList.contains("done")) {
        answer.classList.add("failed");
        answer.textContent += ` [${error.message}]`;
      }
    },
  });
  // The client closes itself after sse.end or sse.error, or onError closed it.
  stream.closed.then(() => {
    answer.classList.remove("streaming");
    form.elements.prompt.disabled = false;
    form.elements.prompt.focus();
  });
});
