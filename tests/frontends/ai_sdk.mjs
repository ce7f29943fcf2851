// The Vercel AI SDK's own client (`ai`: DefaultChatTransport, readUIMessageStream, the UI message chunk
// schema inside the transport) reads real streams from the server and rebuilds the assistant message.
import assert from "node:assert/strict";
import { DefaultChatTransport, readUIMessageStream } from "ai";
import { AUTH, BASE, api, lastId, main, recordingFetch, sseFrames } from "./support.mjs";

const TAG = Math.random().toString(36).slice(2, 8);

function transport(threadId, log) {
  return new DefaultChatTransport({
    api: `${BASE}/api/v1/threads/${threadId}/runs?protocol=ai-sdk`,
    headers: AUTH,
    fetch: recordingFetch(log),
    // the server keeps the thread's history: send only the new message, in the API's own shape
    prepareSendMessagesRequest: ({ messages }) => {
      const last = messages.at(-1);
      const content = last.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
      return { body: { messages: [{ role: last.role, content }] } };
    },
    prepareReconnectToStreamRequest: ({ id, requestMetadata }) => ({
      api: `${BASE}/api/v1/runs/${id}/events?protocol=ai-sdk`,
      headers: { ...AUTH, ...(requestMetadata?.lastEventId ? { "Last-Event-ID": requestMetadata.lastEventId } : {}) },
    }),
  });
}

function userMessage(text) {
  return { id: `u-${TAG}-${text}`, role: "user", parts: [{ type: "text", text }] };
}

async function send(chat, threadId, text) {
  return chat.sendMessages({
    chatId: threadId,
    messages: [userMessage(text)],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
  });
}

/** The last snapshot readUIMessageStream builds from `stream`, continuing `message` if given. */
async function rebuild(stream, { message, errors = [], onSnapshot } = {}) {
  let last;
  for await (const snapshot of readUIMessageStream({ stream, message, onError: (e) => errors.push(e) })) {
    last = snapshot;
    await onSnapshot?.(snapshot);
  }
  return last;
}

const text = (message) => message.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
const state = {};

await main({
  async "a streamed submit rebuilds the assistant message"() {
    const log = [];
    const thread = `fe-ai-text-${TAG}`;
    const message = await rebuild(await send(transport(thread, log), thread, "hello world"));
    const response = log[0];
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("x-vercel-ai-ui-message-stream"), "v1");
    assert.match(response.headers.get("content-type"), /^text\/event-stream/);
    const runId = response.headers.get("x-run-id");
    assert.equal(message.id, runId);
    assert.equal(message.role, "assistant");
    assert.equal(text(message), "echo: hello world");
    assert.deepEqual(message.parts.map((p) => p.type), ["text"]);
    assert.equal(message.parts[0].state, "done");
    assert.equal(message.metadata.run_id, runId);
    assert.equal(message.metadata.thread_id, thread);
    assert.equal(message.metadata.status, "done");
    assert.equal(message.metadata.termination.type, "natural_end");
    const body = await response.text;
    assert.equal(body.trimEnd().split("\n").at(-1), "data: [DONE]");
    Object.assign(state, { runId, thread, body });
  },

  async "a reconnect with Last-Event-ID mid-text resumes the message"() {
    const frames = sseFrames(state.body).filter((f) => f.id);
    const firstDelta = frames.find((f) => JSON.parse(f.data).type === "text-delta");
    const sent = JSON.parse(firstDelta.data).delta;
    const stream = await transport(state.thread, []).reconnectToStream({
      chatId: state.runId,
      metadata: { lastEventId: firstDelta.id },
    });
    const resumed = await rebuild(stream);
    assert.equal(resumed.id, state.runId);
    assert.equal(sent + text(resumed), "echo: hello world");
    assert.equal(resumed.metadata.status, "done");
  },

  async "a reconnect without Last-Event-ID replays the whole run; an unknown run is a 404"() {
    const replayed = await rebuild(await transport(state.thread, []).reconnectToStream({ chatId: state.runId }));
    assert.equal(text(replayed), "echo: hello world");
    await assert.rejects(transport(state.thread, []).reconnectToStream({ chatId: "no-such-run" }), /not found/);
  },

  async "a reconnect at the finish of a done run is a 204: reconnectToStream answers no active stream"() {
    const lastEventId = lastId(state.body);
    const stream = await transport(state.thread, []).reconnectToStream({ chatId: state.runId, metadata: { lastEventId } });
    assert.equal(stream, null);
  },

  async "a tool call suspends for a decision; the decision continues the same message"() {
    const log = [];
    const thread = `fe-ai-ask-${TAG}`;
    const chat = transport(thread, log);
    const waiting = await rebuild(await send(chat, thread, "ask may I?"));
    const runId = log[0].headers.get("x-run-id");
    const tool = waiting.parts.find((p) => p.type === "tool-approve");
    assert.ok(tool, JSON.stringify(waiting.parts));
    assert.equal(tool.state, "approval-requested");
    assert.deepEqual(tool.input, { question: "may I?" });
    assert.equal(tool.approval.id, tool.toolCallId);
    assert.equal(waiting.metadata.status, "waiting");
    assert.equal(waiting.metadata.termination.type, "suspended");

    const decided = await api("POST", `/api/v1/runs/${runId}/decision`, {
      tool_call_id: tool.toolCallId,
      action: "resume",
      payload: { ok: true },
    });
    assert.equal(decided.status, 202, JSON.stringify(decided.body));
    const stream = await chat.reconnectToStream({
      chatId: runId,
      metadata: { lastEventId: lastId(await log[0].text) },
    });
    const done = await rebuild(stream, { message: structuredClone(waiting) });
    assert.equal(done.id, runId);
    const answered = done.parts.filter((p) => p.type === "tool-approve");
    assert.equal(answered.length, 1, JSON.stringify(done.parts));
    assert.equal(answered[0].state, "output-available");
    assert.equal(answered[0].output.action, "resume");
    assert.equal(text(done), 'approved: {"ok": true}');
    assert.equal(done.metadata.status, "done");
  },

  async "useChat's approval response (addToolApprovalResponse) answers the tool call and streams the rest"() {
    const thread = `fe-ai-approve-${TAG}`;
    const chat = new DefaultChatTransport({ api: `${BASE}/api/v1/threads/${thread}/runs?protocol=ai-sdk`, headers: AUTH });
    const asked = userMessage("ask go on?");
    const send = async (messages) =>
      chat.sendMessages({ chatId: thread, messages, trigger: "submit-message", messageId: undefined });
    const waiting = await rebuild(await send([asked]));
    const tool = waiting.parts.find((p) => p.type === "tool-approve");
    assert.equal(tool.state, "approval-requested");
    // what addToolApprovalResponse({id, approved: true}) leaves in the last message, then sends
    const responded = structuredClone(waiting);
    const part = responded.parts.find((p) => p.type === "tool-approve");
    part.state = "approval-responded";
    part.approval = { ...part.approval, approved: true };
    const done = await rebuild(await send([asked, responded]), { message: structuredClone(responded) });
    assert.equal(done.id, waiting.id); // the same message goes on
    const answered = done.parts.filter((p) => p.type === "tool-approve");
    assert.equal(answered.length, 1, JSON.stringify(done.parts));
    assert.equal(answered[0].state, "output-available");
    assert.equal(text(done), 'approved: {"approved": true}');
    assert.equal(done.metadata.status, "done");
    const log = await api("GET", `/api/v1/threads/${thread}/messages`);
    assert.deepEqual(log.body.items.filter((m) => m.role === "user").map((m) => m.content), ["ask go on?"]);
  },

  async "steering received while running is a data part of the message"() {
    const log = [];
    const thread = `fe-ai-steer-${TAG}`;
    let steered = false;
    const message = await rebuild(await send(transport(thread, log), thread, "sleep 1.5"), {
      onSnapshot: async () => {
        if (steered) return;
        steered = true; // the run has started (its start chunk arrived): steer it live
        const sent = await api("POST", `/api/v1/threads/${thread}/messages`, {
          mode: "live_then_queue",
          messages: [{ role: "user", content: "also this" }],
        });
        assert.ok([200, 201, 202].includes(sent.status), JSON.stringify(sent.body));
      },
    });
    const steering = message.parts.find((p) => p.type === "data-steering");
    assert.ok(steering, JSON.stringify(message.parts));
    assert.equal(steering.data.text, "also this");
    assert.equal(text(message), "slept 1.5 | steered: also this");
  },

  async "useChat's own request (the whole history, the chat id as thread) is understood"() {
    const chatId = `fe-ai-chat-${TAG}`;
    const chat = new DefaultChatTransport({ api: `${BASE}/api/v1/runs?protocol=ai-sdk`, headers: AUTH });
    const history = [userMessage("one")];
    const turn = async () =>
      rebuild(
        await chat.sendMessages({ chatId, messages: history, trigger: "submit-message", messageId: undefined }),
      );
    const first = await turn();
    assert.equal(text(first), "echo: one");
    assert.equal(first.metadata.thread_id, chatId);
    history.push(first, userMessage("two"));
    assert.equal(text(await turn()), "echo: two");
    const log = await api("GET", `/api/v1/threads/${chatId}/messages`);
    assert.deepEqual(
      log.body.items.map((m) => [m.role, m.content]),
      [["user", "one"], ["assistant", "echo: one"], ["user", "two"], ["assistant", "echo: two"]],
    );
  },

  async "a failed run ends with an error chunk"() {
    const thread = `fe-ai-fail-${TAG}`;
    const errors = [];
    const message = await rebuild(await send(transport(thread, []), thread, "fail permanent"), { errors });
    assert.equal(errors.length, 1);
    assert.match(errors[0].message, /scripted permanent failure/);
    assert.equal(message.metadata.termination.type, "error");
  },
});
