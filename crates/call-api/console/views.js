// Rendering of the console's views. DOM built with createElement and textContent only (no HTML
// from data); sizes set through the CSSOM, which the Content-Security-Policy allows.

export const STAGES = ["end_of_turn", "stt", "llm_first_token", "llm_first_sentence", "tts_first_byte", "overhead"];
const STAGE_NAMES = {
  end_of_turn: "end of turn",
  stt: "speech to text",
  llm_first_token: "LLM first token",
  llm_first_sentence: "LLM first sentence",
  tts_first_byte: "TTS first byte",
  overhead: "overhead",
};

/** `el("div", {class: "x"}, [children or text])`. */
export function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of [].concat(children)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
}

const seconds = (s) => (s === null || s === undefined ? "–" : `${Number(s).toFixed(s < 10 ? 2 : 1)} s`);
const percent = (r) => (r === null || r === undefined ? "–" : `${Math.round(r * 100)} %`);
const time = (t) => (t ? new Date(t).toLocaleTimeString() : "–");
const money = (v, currency) => (v === null || v === undefined ? "unpriced" : `${v.toFixed(4)} ${currency}`);

function fact(name, value) {
  return el("div", {}, [el("dt", {}, name), el("dd", {}, value)]);
}

function card(title, id, children) {
  return el("section", { class: "card", id }, [el("h2", {}, title), ...[].concat(children)]);
}

function statusPill(call) {
  const text = call.status === "ended" ? call.outcome ?? "ended" : call.status.replace("_", " ");
  return el("span", { class: `pill ${call.status} ${call.outcome ?? ""}` }, text);
}

export function renderCallList(calls, open) {
  if (calls.length === 0) return el("p", { class: "empty" }, "No calls match.");
  const rows = calls.map((c) => {
    const row = el("tr", { "data-call-id": c.id, tabindex: "0" }, [
      el("td", {}, new Date(c.created_at).toLocaleString()),
      el("td", {}, statusPill(c)),
      el("td", {}, c.provider),
      el("td", {}, c.direction),
      el("td", {}, c.from),
      el("td", {}, c.to),
      el("td", {}, seconds(c.duration_seconds)),
      el("td", {}, c.analysis_status ?? ""),
      el("td", { class: "mono" }, c.id),
    ]);
    row.addEventListener("click", () => open(c.id));
    row.addEventListener("keydown", (e) => e.key === "Enter" && open(c.id));
    return row;
  });
  const head = ["created", "status", "carrier", "direction", "from", "to", "duration", "analysis", "id"];
  return el("table", {}, [el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))), el("tbody", {}, rows)]);
}

/** The whole call page; returns the parts the live view updates. */
export function renderCall({ call, turns, quality, analysis, traceTemplate }) {
  const header = el("section", { class: "card", id: "call-header" });
  const waterfall = el("div", { id: "waterfall" });
  const transcript = el("div", { id: "transcript", class: "transcript" });
  const root = el("div", { id: "call" }, [
    header,
    card("Turn latency", "latency-card", [legend(), waterfall]),
    card("Transcript", "transcript-card", transcript),
  ]);
  const view = { root, header, waterfall, transcript, traceTemplate, analysis };
  renderTurns(view, call, turns);
  if (analysis) root.append(renderAnalysis(analysis));
  root.append(el("div", { class: "cols" }, [renderQuality(quality), renderCost(call.cost ?? quality?.cost)]));
  return view;
}

/** Redraws what changes as a live call goes on: its header, waterfall and transcript. */
export function renderTurns(view, call, turns) {
  clear(view.header);
  const live = call.status !== "ended";
  view.header.append(
    el("h2", {}, [
      `Call ${call.id} `,
      statusPill(call),
      live ? el("span", { class: "pill live", id: "live-badge" }, "live · following its events") : null,
    ]),
    el("dl", { class: "facts" }, [
      fact("carrier", call.provider),
      fact("direction", call.direction),
      fact("from → to", `${call.from} → ${call.to}`),
      fact("created", time(call.created_at)),
      fact("media started", time(call.started_at)),
      fact("ended", time(call.ended_at)),
      fact("duration", seconds(call.duration_seconds)),
      fact("end reason", call.end_reason ?? "–"),
      fact("turns", String(turns.length)),
      fact("trace", traceLink(view.traceTemplate, view.analysis)),
    ]),
  );
  clear(view.waterfall);
  view.waterfall.append(renderWaterfall(turns));
  clear(view.transcript);
  view.transcript.append(renderTranscript(call, turns));
}

function traceLink(template, analysis) {
  const traceId = analysis?.trace_id;
  if (!traceId) return "none recorded";
  if (!template || !/^[0-9a-fA-F]{1,64}$/.test(traceId)) return el("span", { class: "mono" }, traceId);
  const href = template.replaceAll("{trace_id}", traceId);
  return el("a", { href, target: "_blank", rel: "noopener noreferrer", id: "trace-link" }, "analysis trace ↗");
}

function legend() {
  return el(
    "div",
    { class: "legend" },
    STAGES.map((s) => el("span", {}, [el("i", { class: `stage-${s}` }), STAGE_NAMES[s]])),
  );
}

/** One bar group per agent turn: its latency stages stacked, to the scale of the slowest turn. */
export function renderWaterfall(turns) {
  const agent = turns.filter((t) => t.role === "agent");
  if (agent.length === 0) return el("p", { class: "empty" }, "No agent turn yet.");
  const total = (t) => t.latency?.total ?? STAGES.reduce((sum, s) => sum + (t.latency?.[s] ?? 0), 0);
  const scale = Math.max(0.001, ...agent.map(total));
  return el(
    "div",
    {},
    agent.map((t) => {
      const bar = el("div", { class: "bar" });
      for (const s of STAGES) {
        const v = t.latency?.[s];
        if (typeof v !== "number" || v <= 0) continue;
        const part = el("span", { class: `stage stage-${s}`, title: `${STAGE_NAMES[s]}: ${seconds(v)}`, "data-stage": s });
        part.style.width = `${(v / scale) * 100}%`;
        bar.append(part);
      }
      const flags = [];
      if (t.interrupted) flags.push(el("span", { class: "flag barge-in", title: "the caller talked over this reply" }, "barge-in"));
      if (t.fallback) flags.push(el("span", { class: "flag fallback" }, "fallback"));
      const note = t.latency ? seconds(total(t)) : t.seq === 0 ? "greeting" : "no latency";
      return el(
        "div",
        { class: `turn-group${t.interrupted ? " interrupted" : ""}`, "data-seq": t.seq },
        [el("span", { class: "label" }, `turn ${t.seq}`), bar, el("span", { class: "note" }, [note, ...flags])],
      );
    }),
  );
}

function renderTranscript(call, turns) {
  if (turns.length === 0) return el("p", { class: "empty" }, "No turn yet.");
  const origin = new Date(call.started_at ?? call.created_at).getTime();
  return el(
    "div",
    {},
    turns.map((t) => {
      const at = (new Date(t.started_at).getTime() - origin) / 1000;
      const text = t.text
        ? t.text
        : el("span", { class: "note" }, t.outcome && t.outcome !== "answered" ? `(${t.outcome}${t.reason ? ": " + t.reason : ""})` : "(nothing said)");
      return el("div", { class: "line", "data-seq": t.seq }, [
        el("span", { class: "time", title: new Date(t.started_at).toLocaleString() }, `+${at.toFixed(1)} s`),
        el("span", { class: `who ${t.role}` }, t.role),
        el("span", {}, [text, t.interrupted ? el("span", { class: "note" }, " (interrupted)") : null]),
      ]);
    }),
  );
}

function renderAnalysis(a) {
  const parts = [];
  if (a.status !== "done") {
    parts.push(el("p", { class: a.status === "failed" ? "error-text" : "empty" }, a.status === "failed" ? `Analysis failed: ${a.error ?? "unknown"}` : "Analysis running…"));
  }
  const audio = a.audio;
  if (audio) {
    const length = Math.max(0.001, a.recording?.duration_seconds ?? Math.max(...audio.channels.map((c) => c.duration_seconds)));
    for (const ch of audio.channels) {
      const strip = el("div", { class: "strip", title: `${ch.label}: ${seconds(ch.speech_seconds)} of speech` });
      for (const seg of ch.speech_segments) {
        const span = el("span");
        span.style.left = `${(seg.start_seconds / length) * 100}%`;
        span.style.width = `${((seg.end_seconds - seg.start_seconds) / length) * 100}%`;
        strip.append(span);
      }
      parts.push(el("div", { class: `strip-row ch${ch.channel}` }, [el("span", {}, ch.label), strip]));
    }
    const c = audio.conversation;
    const facts = [fact("length", seconds(length)), fact("VAD", audio.vad_model)];
    if (c) {
      facts.push(
        fact("talk ratio", audio.channels.map((ch, i) => `${ch.label} ${percent(c.talk_ratio[i])}`).join(" · ")),
        fact("interruptions", String(c.interruptions)),
        fact("overlap", `${c.overlap_count} (${seconds(c.overlap_seconds)})`),
        fact("longest dead air", seconds(c.longest_dead_air_seconds)),
        fact("median response gap", seconds(c.median_response_gap_seconds)),
      );
    }
    if (a.sentiment?.overall) facts.push(fact("sentiment", `${a.sentiment.overall.label} (${a.sentiment.overall.score.toFixed(2)})`));
    parts.push(el("dl", { class: "facts" }, facts));
  }
  const segments = a.transcript?.segments ?? [];
  if (segments.length) {
    parts.push(
      el(
        "div",
        { class: "transcript" },
        segments.map((s) =>
          el("div", { class: "line" }, [
            el("span", { class: "time" }, `${s.start_seconds.toFixed(1)} s`),
            el("span", { class: "who" }, s.label),
            el("span", {}, s.text),
          ]),
        ),
      ),
    );
  }
  return card("Recording", "analysis-card", parts);
}

function renderQuality(report) {
  if (!report || report.status !== "measured" || !report.quality) {
    const why = report?.status === "pending" ? "Measured when the call's media ends." : "Not measured (no live media).";
    return card("Line quality", "quality-card", el("p", { class: "empty" }, why));
  }
  const q = report.quality;
  return card(
    "Line quality",
    "quality-card",
    el("dl", { class: "facts" }, [
      fact("MOS", q.estimate ? q.estimate.mos.toFixed(2) : "–"),
      fact("loss", q.estimate ? `${q.estimate.loss_percent.toFixed(1)} %` : "–"),
      fact("jitter", `${(q.inbound.jitter_seconds * 1000).toFixed(1)} ms`),
      fact("playback delay", seconds(q.playback.delay_mean_seconds)),
      fact("barge-ins", String(q.conversation.barge_ins)),
      fact("dead air", `${q.conversation.dead_air_count} (${seconds(q.conversation.dead_air_seconds)})`),
      fact("caller talk ratio", percent(q.conversation.talk_ratio)),
    ]),
  );
}

function renderCost(cost) {
  if (!cost) return card("Cost", "cost-card", el("p", { class: "empty" }, "No cost (no prices file, or no provider used yet)."));
  return card(
    "Cost",
    "cost-card",
    el("dl", { class: "facts" }, [
      fact("total", cost.complete ? money(cost.total, cost.currency) : "incomplete (some usage unpriced)"),
      fact("speech to text", money(cost.speech_to_text, cost.currency)),
      fact("chat", money(cost.chat, cost.currency)),
      fact("text to speech", money(cost.text_to_speech, cost.currency)),
      fact("unreported requests", String(cost.unreported_requests)),
    ]),
  );
}
