// The call console: asks for an API key once (kept in sessionStorage, never in a URL or cookie),
// then reads the JSON API: the call list, and one call's turns, analysis, quality and cost.
import { el, clear, renderCallList, renderCall, renderTurns } from "/console/views.js";

const KEY_ITEM = "voice-kraliki.api-key";
const LIST_REFRESH_MS = 3000;
const LIVE_RECONNECT_MS = 1000;

const main = document.getElementById("main");
const banner = document.getElementById("banner");
const statusLine = document.getElementById("status-line");
const forgetKey = document.getElementById("forget-key");

/** The API refused the key (401). */
class KeyRefused extends Error {}

/** An API error with the SPEC error body's code and message. */
class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let config = { trace_url_template: null };
let stopView = () => {};

function key() {
  return sessionStorage.getItem(KEY_ITEM);
}

async function api(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Authorization: `Bearer ${key()}`, Accept: "application/json" }, cache: "no-store" });
  } catch {
    throw new ApiFailure(0, "unreachable", "call-api did not answer (network error)");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 401) {
    throw new KeyRefused(body?.error?.message ?? "invalid API key");
  }
  if (!response.ok) {
    const error = body?.error ?? {};
    throw new ApiFailure(response.status, error.code ?? "http_" + response.status, error.message ?? response.statusText);
  }
  return body;
}

function showBanner(text) {
  banner.textContent = text;
  banner.hidden = !text;
}

/** Handles a failed request: a refused key returns to the key form with a clear message. */
function failed(error) {
  if (error instanceof KeyRefused) {
    sessionStorage.removeItem(KEY_ITEM);
    askForKey(`This API key was refused (${error.message}). Check it and enter it again.`);
    return;
  }
  showBanner(error instanceof ApiFailure ? `Request failed: ${error.message} (${error.code})` : `Something went wrong: ${error}`);
}

function askForKey(message) {
  stopView();
  stopView = () => {};
  forgetKey.hidden = true;
  statusLine.textContent = "";
  showBanner("");
  clear(main);
  main.append(document.getElementById("key-template").content.cloneNode(true));
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  const note = document.getElementById("key-message");
  if (message) {
    note.textContent = message;
    note.hidden = false;
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY_ITEM, value);
    note.hidden = true;
    // Checked once here, so a wrong key is told at once rather than as an empty list.
    try {
      await api("/v1/calls?limit=1");
    } catch (error) {
      failed(error);
      return;
    }
    route();
  });
  input.focus();
}

/** Repeats `task` every `ms` while the tab is visible; returns a stop function. */
function every(ms, task) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) await task();
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function listView() {
  clear(main);
  const filters = {
    status: el("select", { id: "filter-status", "aria-label": "status" }, [
      el("option", { value: "" }, "any status"),
      ...["queued", "in_progress", "ended"].map((s) => el("option", { value: s }, s.replace("_", " "))),
    ]),
    provider: el("select", { id: "filter-provider", "aria-label": "carrier" }, [
      el("option", { value: "" }, "any carrier"),
      ...["twilio", "telnyx", "vonage", "plivo", "sip", "websocket"].map((p) => el("option", { value: p }, p)),
    ]),
    text: el("input", { id: "filter-text", type: "search", placeholder: "id, number or metadata contains…", "aria-label": "text" }),
  };
  const count = el("span", { class: "muted", id: "list-count" });
  const table = el("div", { id: "calls" });
  main.append(el("div", { class: "filters" }, [filters.status, filters.provider, filters.text, count]), table);

  let last = null;
  const draw = () => {
    if (!last) return;
    const needle = filters.text.value.trim().toLowerCase();
    const shown = needle
      ? last.filter((c) => [c.id, c.from, c.to, JSON.stringify(c.metadata ?? {})].some((v) => String(v).toLowerCase().includes(needle)))
      : last;
    count.textContent = `${shown.length} of ${last.length} newest calls · refreshed ${new Date().toLocaleTimeString()}`;
    clear(table);
    table.append(renderCallList(shown, (id) => (location.hash = `#/calls/${id}`)));
  };
  const load = async () => {
    const query = new URLSearchParams({ limit: "100" });
    if (filters.status.value) query.set("status", filters.status.value);
    if (filters.provider.value) query.set("provider", filters.provider.value);
    try {
      last = (await api(`/v1/calls?${query}`)).calls;
      showBanner("");
      draw();
    } catch (error) {
      failed(error);
    }
  };
  filters.status.addEventListener("change", load);
  filters.provider.addEventListener("change", load);
  filters.text.addEventListener("input", draw);
  statusLine.textContent = "Calls";
  return every(LIST_REFRESH_MS, load);
}

/**
 * Follows a live call's event stream (Server-Sent Events read with fetch, so the key goes in the
 * Authorization header, never in the URL): at each event, reads the call and its turns again.
 * A dropped stream reconnects with Last-Event-ID. Calls `onChange({call, turns})` whenever the
 * record or turns changed. Returns a function that stops it.
 */
function watchCall(id, onChange) {
  const abort = new AbortController();
  let seen = "";
  let lastEventId = null;
  let stopped = false;
  const refresh = async () => {
    const [call, turns] = await Promise.all([api(`/v1/calls/${id}`), api(`/v1/calls/${id}/turns`)]);
    const now = JSON.stringify([call.status, call.outcome, turns.turns]);
    if (now !== seen) {
      seen = now;
      await onChange({ call, turns: turns.turns });
    }
  };
  const follow = async () => {
    const headers = { Authorization: `Bearer ${key()}`, Accept: "text/event-stream" };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    const response = await fetch(`/v1/calls/${id}/events`, { headers, cache: "no-store", signal: abort.signal });
    if (response.status === 401) throw new KeyRefused("invalid API key");
    if (!response.ok || !response.body) throw new ApiFailure(response.status, "http_" + response.status, "the event stream was refused");
    statusLine.textContent = `Call ${id} · live: following its events`;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const message = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let isEvent = false;
        for (const line of message.split("\n")) {
          if (line.startsWith("id:")) lastEventId = line.slice(3).trim();
          if (line.startsWith("data:")) isEvent = true;
        }
        if (isEvent) await refresh();
      }
    }
  };
  (async () => {
    while (!stopped) {
      try {
        await follow();
      } catch (error) {
        if (stopped || error?.name === "AbortError") return;
        if (error instanceof KeyRefused) {
          failed(error);
          return;
        }
      }
      if (stopped) return;
      // The stream ended (this replica is shutting down, or the network dropped): go on after
      // the last event received, on whichever replica answers.
      statusLine.textContent = `Call ${id} · live: reconnecting…`;
      await new Promise((resolve) => setTimeout(resolve, LIVE_RECONNECT_MS));
    }
  })();
  return () => {
    stopped = true;
    abort.abort();
  };
}

function callView(id) {
  clear(main);
  statusLine.textContent = `Call ${id}`;
  let view = null;
  let stopWatch = () => {};
  let stopped = false;
  const load = async () => {
    try {
      const [call, turns] = await Promise.all([api(`/v1/calls/${id}`), api(`/v1/calls/${id}/turns`)]);
      const [quality, analysis] = await Promise.all([
        api(`/v1/calls/${id}/quality`),
        call.analysis_status ? api(`/v1/calls/${id}/analysis`) : Promise.resolve(null),
      ]);
      if (stopped) return;
      clear(main);
      view = renderCall({ call, turns: turns.turns, quality, analysis, traceTemplate: config.trace_url_template });
      main.append(view.root);
      showBanner("");
      if (call.status !== "ended") {
        stopWatch = watchCall(id, async (update) => {
          if (stopped) return;
          renderTurns(view, update.call, update.turns);
          if (update.call.status === "ended") {
            // Its quality and cost arrive as it ends: show the finished call once.
            stopWatch();
            await load();
          }
        });
      }
    } catch (error) {
      failed(error);
    }
  };
  load();
  return () => {
    stopped = true;
    stopWatch();
  };
}

function route() {
  stopView();
  stopView = () => {};
  showBanner("");
  if (!key()) {
    askForKey();
    return;
  }
  forgetKey.hidden = false;
  const match = location.hash.match(/^#\/calls\/([0-9a-fA-F-]{36})$/);
  stopView = match ? callView(match[1]) : listView();
}

async function start() {
  try {
    const response = await fetch("/console/config.json", { cache: "no-store" });
    if (response.ok) config = await response.json();
  } catch {
    // Without it there is no trace link; everything else works.
  }
  forgetKey.addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    askForKey();
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("unhandledrejection", (event) => showBanner(`Something went wrong: ${event.reason}`));
  route();
}

start();
