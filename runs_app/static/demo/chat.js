// The /demo/ page's client. Each message is a foreground run on this page's thread; its answer is read
// as the AI SDK UI message stream (`?protocol=ai-sdk`: SSE frames whose `data:` is one JSON chunk) with
// fetch's body reader, no library. A message sent while a run streams is steering for that run. A tool
// call waiting for a decision gets Approve / Deny buttons as soon as the run asks (the run may hold its
// claim meanwhile, AWAKEN_LIVE_SUSPEND_HOLD_MS, to take the decision live: its stream then simply goes
// on); the decision's continuation after the run ended waiting, and a stream that drops before its
// finish, are read from GET runs/{id}/events with the last SSE id seen. A run at work shows a spinner.
(() => {
  "use strict";
  const form = document.getElementById("chat");
  const input = document.getElementById("text");
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  const tokenInput = document.getElementById("token");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const agentId = form.dataset.agent;
  const MAX_RECONNECTS = 3;

  const randomId = () =>
    window.crypto && crypto.randomUUID ? crypto.randomUUID() : Math.random().toString(36).slice(2);
  const threadId = sessionStorage.getItem("demo-thread") || `demo-${randomId()}`;
  sessionStorage.setItem("demo-thread", threadId);
  document.getElementById("thread-id").textContent = threadId;
  let active = null; // the view of the run streaming now

  function headers(extra = {}) {
    const all = { "Content-Type": "application/json", "X-CSRFToken": csrf, ...extra };
    const token = tokenInput && tokenInput.value.trim();
    if (token) all.Authorization = `Token ${token}`;
    return all;
  }

  function say(text) {
    status.textContent = text;
  }

  function bubble(kind, text = "") {
    const li = document.createElement("li");
    li.className = kind;
    li.textContent = text;
    log.appendChild(li);
    return li;
  }

  async function problem(response) {
    try {
      const body = await response.json();
      return `${response.status}: ${body.error || JSON.stringify(body)}`;
    } catch {
      return `${response.status} ${response.statusText}`;
    }
  }

  /** One assistant message (one run): applies the stream's chunks to its bubble. */
  class RunView {
    constructor() {
      this.li = bubble("assistant");
      this.runId = null;
      this.lastEventId = null;
      this.texts = new Map();
      this.tools = new Map();
      this.finished = false;
      this.status = null;
      this.reading = null; // the read of the stream open now (a promise), if any
      this.spinner = document.createElement("span");
      this.spinner.className = "spinner";
      this.spinner.setAttribute("aria-label", "working");
      this.working(true);
    }

    /** The spinner at the end of the bubble while the run works (not while it waits for the user). */
    working(on) {
      if (on) this.li.appendChild(this.spinner);
      else this.spinner.remove();
      this.li.classList.toggle("working", on);
    }

    span(className, text) {
      const el = document.createElement("span");
      el.className = className;
      el.textContent = text;
      this.li.insertBefore(el, this.spinner.parentNode === this.li ? this.spinner : null);
      return el;
    }

    apply(chunk) {
      switch (chunk.type) {
        case "start":
          this.runId = chunk.messageId;
          this.li.dataset.runId = chunk.messageId;
          break;
        case "text-start":
          this.texts.set(chunk.id, this.span("text", ""));
          break;
        case "text-delta":
          this.texts.get(chunk.id).textContent += chunk.delta;
          break;
        case "tool-input-available":
          if (!this.tools.has(chunk.toolCallId)) {
            const el = this.span("tool", `tool ${chunk.toolName}(${JSON.stringify(chunk.input)})`);
            this.tools.set(chunk.toolCallId, el);
          }
          break;
        case "tool-approval-request":
          this.askDecision(chunk.toolCallId);
          this.working(false);
          say(`run ${this.runId} waits for your decision`);
          break;
        case "tool-output-available":
          this.toolSays(chunk.toolCallId, ` → ${JSON.stringify(chunk.output)}`);
          break;
        case "tool-output-denied":
          this.toolSays(chunk.toolCallId, " → denied");
          break;
        case "tool-output-error":
          this.toolSays(chunk.toolCallId, ` → error: ${chunk.errorText}`);
          break;
        case "data-steering":
          this.span("steering", `(steered: ${chunk.data.text})`);
          break;
        case "data-retry":
          say(`attempt ${chunk.data.attempt} failed, retrying…`);
          break;
        case "error":
          this.li.classList.add("error");
          this.span("error-text", `error: ${chunk.errorText}`);
          break;
        case "abort":
          this.span("aborted", "(cancelled)");
          break;
        case "finish":
          this.finished = true;
          this.working(false);
          if (active === this) active = null; // the next message is a new run, not steering
          this.status = chunk.messageMetadata && chunk.messageMetadata.status;
          say(`run ${this.runId}: ${this.status}`);
          break;
        default:
          break; // transient data and chunks this page does not draw
      }
    }

    toolSays(toolCallId, text) {
      const el = this.tools.get(toolCallId);
      if (el) el.querySelectorAll("button").forEach((b) => b.remove());
      if (el) el.appendChild(document.createTextNode(text));
    }

    askDecision(toolCallId) {
      const el = this.tools.get(toolCallId);
      for (const [label, action] of [["Approve", "resume"], ["Deny", "cancel"]]) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = label;
        button.className = `decide-${action}`;
        button.addEventListener("click", () => this.decide(toolCallId, action));
        el.appendChild(button);
      }
    }

    async decide(toolCallId, action) {
      this.tools.get(toolCallId).querySelectorAll("button").forEach((b) => (b.disabled = true));
      this.working(true);
      const response = await fetch(`/api/v1/runs/${this.runId}/decision`, {
        method: "POST",
        headers: headers(),
        body: JSON.stringify({ tool_call_id: toolCallId, action, payload: { approved: action === "resume" } }),
        credentials: "same-origin",
      });
      if (!response.ok) {
        this.working(false);
        return say(`decision refused: ${await problem(response)}`);
      }
      say(`decision sent to run ${this.runId}`);
      // A run still holding its claim took the decision live: the stream open now carries on with it.
      // A run that ended waiting resumes from the queue: its continuation follows its waiting finish.
      if (this.reading) await this.reading;
      if (this.status !== "done") {
        this.finished = false;
        await follow(this);
      }
    }
  }

  /** Reads an SSE body into `view`; returns when the server ends the body. */
  async function read(response, view) {
    view.reading = readBody(response, view);
    try {
      await view.reading;
    } finally {
      view.reading = null;
    }
  }

  async function readBody(response, view) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        frame(buffer.slice(0, cut), view);
        buffer = buffer.slice(cut + 2);
      }
    }
  }

  function frame(raw, view) {
    const data = [];
    for (const line of raw.split("\n")) {
      if (line.startsWith("id:")) view.lastEventId = line.slice(3).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length && data.join("\n") !== "[DONE]") view.apply(JSON.parse(data.join("\n")));
  }

  /** The run's events after the last id seen, until its next finish (reconnecting if it drops). */
  async function follow(view) {
    active = view;
    try {
      for (let attempt = 0; !view.finished && attempt < MAX_RECONNECTS; attempt++) {
        const extra = view.lastEventId ? { "Last-Event-ID": view.lastEventId } : {};
        const response = await fetch(`/api/v1/runs/${view.runId}/events?protocol=ai-sdk`, {
          headers: headers({ Accept: "text/event-stream", ...extra }),
          credentials: "same-origin",
        });
        if (!response.ok) return say(`stream refused: ${await problem(response)}`);
        await read(response, view);
      }
    } finally {
      if (active === view) active = null;
      if (!view.finished) view.working(false); // the stream gave up before the run's finish
    }
  }

  async function submit(text) {
    const view = new RunView();
    active = view;
    try {
      const response = await fetch(`/api/v1/threads/${threadId}/runs?protocol=ai-sdk`, {
        method: "POST",
        headers: headers(),
        body: JSON.stringify({ agent_id: agentId, messages: [{ role: "user", content: text }] }),
        credentials: "same-origin",
      });
      if (!response.ok) {
        view.working(false);
        view.li.classList.add("error");
        view.li.textContent = await problem(response);
        return;
      }
      view.runId = response.headers.get("X-Run-Id");
      await read(response, view);
    } finally {
      if (active === view) active = null;
    }
    if (!view.finished && view.runId) await follow(view); // the stream dropped before the finish
  }

  async function steer(text) {
    const response = await fetch(`/api/v1/threads/${threadId}/messages`, {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ mode: "live_then_queue", messages: [{ role: "user", content: text }] }),
      credentials: "same-origin",
    });
    if (!response.ok) return say(`steering refused: ${await problem(response)}`);
    const body = await response.json();
    // `delivered` says whether the running run took the message or it was queued as a run of its own
    say(body.delivered === "live" ? "steered into the running run" : "queued: the next run answers it");
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    bubble("user", text);
    (active ? steer(text) : submit(text)).catch((error) => say(`error: ${error}`));
  });
})();
