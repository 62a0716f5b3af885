// The Producer page: sends custom messages (POST /api/messages, optionally waiting for
// the consumer's reply) and game events (POST /api/messages/game-event), showing the
// server's field errors inline; lists what the custom-message consumer received and
// the audit log.
"use strict";

const $ = (id) => document.getElementById(id);

function showErrors(form, banner, error) {
  for (const slot of form.querySelectorAll("[data-field-error]")) slot.textContent = "";
  banner.textContent = "";
  const fields = (error.problem && error.problem.errors) || [];
  for (const { field, reason } of fields) {
    const slot = form.querySelector(`[data-field-error="${CSS.escape(field)}"]`);
    if (slot) slot.textContent = reason;
    else banner.textContent = `${field}: ${reason}`;
  }
  if (fields.length === 0) banner.textContent = error.message;
}

function clearErrors(form, banner) {
  showErrors(form, banner, { message: "" });
}

function logSent(where, what, answer) {
  const empty = $("sent").querySelector(".empty");
  if (empty) empty.remove();
  $("sent").prepend(el("tr", {},
    el("td", { textContent: new Date().toLocaleTimeString() }),
    el("td", { textContent: where }),
    el("td", { textContent: what }),
    el("td", { textContent: answer }),
  ));
}

/** NAME=VALUE lines; integers travel as integers, as `retrocat publish` sends them. */
function parseHeaders(text) {
  const headers = {};
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at < 1) throw Object.assign(new Error(`"${line}" is not NAME=VALUE`), {
      problem: { errors: [{ field: "headers", reason: `"${line}" is not NAME=VALUE` }] },
    });
    const value = line.slice(at + 1);
    headers[line.slice(0, at)] = /^-?\d+$/.test(value) ? Number(value) : value;
  }
  return headers;
}

function parseMessage(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    return text;
  }
}

$("custom-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const data = new FormData(form);
  try {
    const body = {
      exchange: data.get("exchange"),
      routingKey: data.get("routingKey"),
      message: parseMessage(data.get("message")),
      priority: Number(data.get("priority") || 0),
      headers: parseHeaders(data.get("headers")),
      persistent: data.get("persistent") === "on",
    };
    const delay = Number(data.get("delayMs") || 0);
    if (delay > 0) body.delayMs = delay;
    const wait = Number(data.get("waitMs") || 0);
    if (wait > 0) body.waitMs = wait;
    const answer = await api("/api/messages", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    clearErrors(form, $("custom-error"));
    const reply = answer.reply ? `; reply ${JSON.stringify(answer.reply)}` : "";
    logSent(`${body.exchange || "(default)"} / ${body.routingKey}`, JSON.stringify(body.message),
      `confirmed, id ${answer.messageId}${reply}`);
    refreshReceived();
  } catch (error) {
    showErrors(form, $("custom-error"), error);
  }
});

$("event-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const data = new FormData(form);
  const body = { gameId: Number(data.get("gameId")) || undefined, action: data.get("action") };
  try {
    const answer = await api("/api/messages/game-event", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    clearErrors(form, $("event-error"));
    logSent("game_events", `${body.action} game ${body.gameId}`, answer.message);
  } catch (error) {
    showErrors(form, $("event-error"), error);
  }
});

/** Fills `tbody` with one row per entry, or its empty line. */
function fillRows(tbody, entries, emptyText, columns) {
  tbody.replaceChildren(...(entries.length === 0
    ? [el("tr", { className: "empty" }, el("td", { colSpan: 4, textContent: emptyText }))]
    : entries.map((entry) => el("tr", {},
      ...columns(entry).map((text) => el("td", { textContent: text }))))));
}

/** The lists below hold message bodies: only an admin may read them. */
function lockedRows(tbody, what) {
  fillRows(tbody, [], `log in as an admin to see ${what}`, () => []);
}

async function refreshReceived() {
  if (!caller.identity) return; // caller.onChange refreshes once it is known
  if (!caller.can("admin")) return lockedRows($("received"), "what was received");
  try {
    const received = await api("/api/messages/received?limit=20");
    fillRows($("received"), received, "nothing received yet", (entry) => [
      formatTime(entry.receivedAt), entry.messageId, entry.routingKey,
      JSON.stringify(entry.body.message ?? entry.body),
    ]);
  } catch (_) { /* shown again on the next refresh */ }
}

async function refreshAudit() {
  if (!caller.identity) return;
  if (!caller.can("admin")) return lockedRows($("audit"), "the audit log");
  try {
    const audit = await api("/api/audit?limit=20");
    fillRows($("audit"), audit, "no events yet", (entry) => [
      formatTime(entry.receivedAt), entry.routingKey, JSON.stringify(entry.body),
    ]);
  } catch (_) { /* shown again on the next refresh */ }
}

const refresh = () => {
  refreshReceived();
  refreshAudit();
};
caller.onChange(refresh);
setInterval(refresh, 3000);
