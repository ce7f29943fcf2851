// AG-UI's own client (`@ag-ui/client`: HttpAgent with its SSE parser, event verifier and message
// reducer) runs against the real server and rebuilds the thread's messages.
import assert from "node:assert/strict";
import { EventType, HttpAgent } from "@ag-ui/client";
import { AUTH, BASE, api, lastId, main, recordingFetch, sseFrames } from "./support.mjs";

const TAG = Math.random().toString(36).slice(2, 8);

/** An agent that submits to the thread's streaming runs route in AG-UI. */
function submitAgent(threadId, text, log) {
  return new HttpAgent({
    url: `${BASE}/api/v1/threads/${threadId}/runs?protocol=ag-ui`,
    headers: AUTH,
    threadId,
    initialMessages: [{ id: `u-${TAG}-${text}`, role: "user", content: text }],
    fetch: recordingFetch(log),
  });
}

/** The same client reading a run's event stream (GET runs/{id}/events), resuming after `lastEventId`. */
class EventsAgent extends HttpAgent {
  constructor({ runId, lastEventId, ...config }) {
    super({ ...config, url: `${BASE}/api/v1/runs/${runId}/events?protocol=ag-ui`, headers: AUTH });
    this.lastEventId = lastEventId;
  }

  requestInit() {
    const headers = { ...this.headers, Accept: "text/event-stream" };
    if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
    return { method: "GET", headers, signal: this.abortController.signal };
  }
}

/** runAgent, recording every event the client's pipeline passed (verified and applied). */
async function run(agent, parameters = {}, subscriber = {}) {
  const events = [];
  const finished = [];
  const result = await agent.runAgent(parameters, {
    ...subscriber,
    onEvent: ({ event }) => {
      events.push(event);
    },
    onRunFinishedEvent: (params) => {
      finished.push(params);
    },
  });
  return { ...result, events, finished, types: events.map((e) => e.type) };
}

const assistantText = (messages) =>
  messages.filter((m) => m.role === "assistant" && typeof m.content === "string").map((m) => m.content).join("");
const state = {};

await main({
  async "a streamed submit rebuilds the assistant message"() {
    const log = [];
    const thread = `fe-agui-text-${TAG}`;
    const got = await run(submitAgent(thread, "hello world", log));
    assert.equal(log[0].status, 200);
    assert.match(log[0].headers.get("content-type"), /^text\/event-stream/);
    const runId = log[0].headers.get("x-run-id");
    assert.equal(got.types[0], EventType.RUN_STARTED);
    assert.equal(got.events[0].runId, runId);
    assert.equal(got.events[0].threadId, thread);
    assert.equal(got.types.at(-1), EventType.RUN_FINISHED);
    assert.ok(got.types.includes(EventType.TEXT_MESSAGE_START) && got.types.includes(EventType.TEXT_MESSAGE_END));
    assert.equal(got.result, "echo: hello world");
    assert.equal(got.finished[0].outcome, "success");
    assert.equal(got.newMessages.length, 1);
    assert.equal(got.newMessages[0].role, "assistant");
    assert.equal(got.newMessages[0].content, "echo: hello world");
    Object.assign(state, { thread, runId, body: await log[0].text });
  },

  async "a reconnect with Last-Event-ID mid-text resumes the run's events"() {
    const frames = sseFrames(state.body).filter((f) => f.id);
    const firstContent = frames.find((f) => JSON.parse(f.data).type === EventType.TEXT_MESSAGE_CONTENT);
    const sent = JSON.parse(firstContent.data).delta;
    const agent = new EventsAgent({ runId: state.runId, lastEventId: firstContent.id, threadId: state.thread });
    const got = await run(agent);
    assert.equal(got.types[0], EventType.RUN_STARTED); // the client joins mid-run: the run and message reopen
    assert.equal(got.types[1], EventType.TEXT_MESSAGE_START);
    assert.equal(sent + assistantText(got.newMessages), "echo: hello world");
    assert.equal(got.result, "echo: hello world");
  },

  async "a reconnect at the finish of a done run gets that finish again, as a run of its own"() {
    const agent = new EventsAgent({ runId: state.runId, lastEventId: lastId(state.body), threadId: state.thread });
    const got = await run(agent); // @ag-ui/client fails on a body-less 204; this ends at once
    assert.deepEqual(got.types, [EventType.RUN_STARTED, EventType.RUN_FINISHED]);
    assert.equal(got.result, "echo: hello world");
    assert.equal(got.finished[0].outcome, "success");
    assert.equal(got.newMessages.length, 0);
  },

  async "a tool call suspends as an interrupt; the decision's continuation answers it"() {
    const log = [];
    const thread = `fe-agui-ask-${TAG}`;
    const agent = submitAgent(thread, "ask may I?", log);
    const waiting = await run(agent);
    const runId = log[0].headers.get("x-run-id");
    assert.deepEqual(
      waiting.types.filter((t) => t.startsWith("TOOL_CALL")),
      [EventType.TOOL_CALL_START, EventType.TOOL_CALL_ARGS, EventType.TOOL_CALL_END],
    );
    const [call] = waiting.newMessages.flatMap((m) => m.toolCalls ?? []);
    assert.equal(call.function.name, "approve");
    assert.deepEqual(JSON.parse(call.function.arguments), { question: "may I?" });
    assert.equal(waiting.finished[0].outcome, "interrupt");
    const [interrupt] = waiting.finished[0].interrupts;
    assert.equal(interrupt.toolCallId, call.id);
    assert.equal(interrupt.message, "may I?");
    assert.equal(agent.pendingInterrupts.length, 1);

    const decided = await api("POST", `/api/v1/runs/${runId}/decision`, {
      tool_call_id: call.id,
      action: "resume",
      payload: { ok: true },
    });
    assert.equal(decided.status, 202, JSON.stringify(decided.body));
    const follow = new EventsAgent({
      runId,
      lastEventId: lastId(await log[0].text),
      threadId: thread,
      initialMessages: agent.messages,
    });
    follow.pendingInterrupts = agent.pendingInterrupts;
    const resume = [{ interruptId: interrupt.id, status: "resolved", payload: { ok: true } }];
    const done = await run(follow, { resume });
    assert.equal(done.types[0], EventType.RUN_STARTED);
    const result = done.newMessages.find((m) => m.role === "tool");
    assert.equal(result.toolCallId, call.id);
    assert.equal(JSON.parse(result.content).action, "resume");
    assert.equal(assistantText(done.newMessages), 'approved: {"ok": true}');
    assert.equal(done.finished[0].outcome, "success");
  },

  async "the next RunAgentInput's resume answers the interrupt and streams the continuation"() {
    const thread = `fe-agui-resume-${TAG}`;
    const agent = submitAgent(thread, "ask shall we?", []);
    const waiting = await run(agent);
    const [interrupt] = waiting.finished[0].interrupts;
    assert.equal(interrupt.message, "shall we?");
    const done = await run(agent, {
      resume: [{ interruptId: interrupt.id, status: "resolved", payload: { yes: 1 } }],
    });
    assert.equal(done.types[0], EventType.RUN_STARTED);
    assert.equal(done.events[0].runId, waiting.events[0].runId); // the same run goes on
    const result = done.newMessages.find((m) => m.role === "tool");
    assert.equal(result.toolCallId, interrupt.toolCallId);
    assert.equal(assistantText(done.newMessages), 'approved: {"yes": 1}');
    assert.equal(done.finished[0].outcome, "success");
    assert.equal(agent.pendingInterrupts.length, 0);
    const log = await api("GET", `/api/v1/threads/${thread}/messages`);
    assert.deepEqual(log.body.items.filter((m) => m.role === "user").map((m) => m.content), ["ask shall we?"]);
  },

  async "steering received while running is a custom event"() {
    const thread = `fe-agui-steer-${TAG}`;
    const got = await run(submitAgent(thread, "sleep 1.5", []), {}, {
      onRunStartedEvent: async () => {
        const sent = await api("POST", `/api/v1/threads/${thread}/messages`, {
          mode: "live_then_queue",
          messages: [{ role: "user", content: "also this" }],
        });
        assert.ok([200, 201, 202].includes(sent.status), JSON.stringify(sent.body));
      },
    });
    const steering = got.events.find((e) => e.type === EventType.CUSTOM && e.name === "steering_received");
    assert.ok(steering, JSON.stringify(got.types));
    assert.equal(steering.value.text, "also this");
    assert.equal(assistantText(got.newMessages), "slept 1.5 | steered: also this");
  },

  async "a second run on the same agent sends its whole history; only the new message is added"() {
    const thread = `fe-agui-turns-${TAG}`;
    const agent = new HttpAgent({
      url: `${BASE}/api/v1/runs?protocol=ag-ui`, // the thread comes from the input's threadId
      headers: AUTH,
      threadId: thread,
      initialMessages: [{ id: `u-${TAG}-one`, role: "user", content: "one" }],
    });
    assert.equal((await run(agent)).result, "echo: one");
    agent.addMessage({ id: `u-${TAG}-two`, role: "user", content: "two" });
    const second = await run(agent);
    assert.equal(second.result, "echo: two");
    assert.equal(assistantText(second.newMessages), "echo: two");
    const log = await api("GET", `/api/v1/threads/${thread}/messages`);
    assert.deepEqual(
      log.body.items.map((m) => [m.role, m.content]),
      [["user", "one"], ["assistant", "echo: one"], ["user", "two"], ["assistant", "echo: two"]],
    );
  },

  async "a failed run ends with RUN_ERROR"() {
    const thread = `fe-agui-fail-${TAG}`;
    const errors = [];
    const agent = submitAgent(thread, "fail permanent", []);
    await run(agent, {}, { onRunErrorEvent: ({ event }) => errors.push(event) }).catch((e) => errors.push(e));
    const event = errors.find((e) => e.type === EventType.RUN_ERROR);
    assert.ok(event, String(errors));
    assert.match(event.message, /scripted permanent failure/);
  },

  async "an unknown protocol is a 400 naming the field"() {
    const response = await fetch(`${BASE}/api/v1/runs/${state.runId}/events?protocol=carrier-pigeon`, {
      headers: AUTH,
    });
    assert.equal(response.status, 400);
    assert.equal((await response.json()).field, "protocol");
  },
});
