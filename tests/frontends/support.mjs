// Shared by the front-end client checks: the server under test (AWAKEN_BASE_URL, AWAKEN_TOKEN), plain
// API calls, and a fetch that keeps a copy of each streamed body (to read the SSE ids a client resumes
// from; the clients' own parsers drop them).
import assert from "node:assert/strict";

export const BASE = process.env.AWAKEN_BASE_URL;
export const TOKEN = process.env.AWAKEN_TOKEN;
assert.ok(BASE && TOKEN, "AWAKEN_BASE_URL and AWAKEN_TOKEN must be set");
export const AUTH = { Authorization: `Token ${TOKEN}` };

export async function api(method, path, body) {
  const response = await fetch(BASE + path, {
    method,
    headers: { ...AUTH, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** A fetch that records each response's status and headers and a copy of its body text. */
export function recordingFetch(log) {
  return async (url, init) => {
    const response = await fetch(url, init);
    const entry = { url: String(url), status: response.status, headers: response.headers };
    log.push(entry);
    if (!response.body) return response;
    const [forClient, copy] = response.body.tee();
    entry.text = new Response(copy).text();
    return new Response(forClient, { status: response.status, headers: response.headers });
  };
}

/** The SSE frames of a body: [{id, data}] (only frames with data; ids as sent, undefined if none). */
export function sseFrames(text) {
  return text
    .split("\n\n")
    .filter((raw) => raw.includes("data:"))
    .map((raw) => {
      const lines = raw.split("\n");
      const id = lines.find((l) => l.startsWith("id: "))?.slice(4);
      const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      return { id, data };
    });
}

export function lastId(text) {
  return sseFrames(text).filter((f) => f.id).at(-1).id;
}

export async function waitFor(check, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Runs the named checks in order, printing `ok <name>`; the first failure fails the process. */
export async function main(checks) {
  for (const [name, check] of Object.entries(checks)) {
    try {
      await check();
      console.log(`ok ${name}`);
    } catch (error) {
      console.error(`FAIL ${name}`);
      console.error(error);
      process.exit(1);
    }
  }
}
