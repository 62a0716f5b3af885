// The Processing page: every game's processing, live, with its attempt history.
"use strict";

const $ = (id) => document.getElementById(id);
let selected = null;

/** One badge per status with its count over the whole catalog, "–" when unknown. */
function renderCounters(counts) {
  $("counters").replaceChildren(
    ...["pending", "processing", "completed", "failed"].map((status) => {
      const n = counts && Number.isInteger(counts[status]) ? String(counts[status]) : "–";
      const number = el("span", { textContent: n });
      number.dataset.status = status;
      return el("span", {}, statusBadge(status), " ", number);
    }),
  );
}

/** Counters come from the database: the rows on screen are only the newest 200. */
async function loadCounters() {
  try {
    renderCounters(await api("/api/tasks/counts"));
    $("counters").title = "";
  } catch (error) {
    // Keep the last counts through a failed refresh; "–" until there are some.
    if (!$("counters").childElementCount) renderCounters(null);
    $("counters").title = `Failed to load the counts: ${error.message}`;
  }
}

function taskRow(task) {
  const row = el(
    "tr",
    { onclick: () => showHistory(task) },
    el("td", { textContent: task.title }),
    el("td", {}, statusBadge(task.processingStatus)),
    el("td", { textContent: task.version }),
    el("td", { textContent: task.attempts }),
    el("td", { textContent: task.lastDurationMs === null ? "" : `${task.lastDurationMs} ms` }),
    el("td", { className: "error-text", textContent: task.lastError || "" }),
  );
  row.dataset.id = task.gameId;
  return row;
}

/** The tasks view's query: the filters and order of the form above it, those left blank
 * omitted, for a page of `limit` rows. */
function taskQuery(limit) {
  const query = new URLSearchParams({ limit: String(limit) });
  for (const field of $("task-filters").elements) {
    if (field.name && field.value.trim()) query.set(field.name, field.value.trim());
  }
  return query;
}

/** The cursor of the page after the rows shown, if more follow. */
let nextTasks = null;

function showMoreTasks(cursor) {
  nextTasks = cursor;
  $("tasks-more").classList.toggle("hidden", !cursor);
}

/** The first rows again, as many as are shown (200 at least, 500 at most). */
async function loadTasks() {
  const counted = loadCounters(); // alongside the rows, not after them
  const shown = Math.min(500, Math.max(200, $("tasks").children.length));
  const page = await api(`/api/tasks?${taskQuery(shown)}`);
  $("tasks").replaceChildren(...page.items.map(taskRow));
  showMoreTasks(page.nextCursor);
  if (selected) await showHistory(selected, false);
  await counted;
}

async function loadMoreTasks() {
  const query = taskQuery(200);
  query.set("cursor", nextTasks);
  const page = await api(`/api/tasks?${query}`);
  $("tasks").append(...page.items.map(taskRow));
  showMoreTasks(page.nextCursor);
}

async function showHistory(task, scroll = true) {
  selected = task;
  const attempts = await api(`/api/games/${Number(task.gameId)}/history`).catch(() => []);
  $("history-title").textContent = `History of ${task.title}`;
  $("history").replaceChildren(
    ...attempts.map((a) =>
      el(
        "tr",
        {},
        el("td", { textContent: a.attempt }),
        el("td", { textContent: a.version }),
        el("td", {}, statusBadge(a.outcome === "retry" ? "pending" : a.outcome === "skipped" ? "processing" : a.outcome), ` ${a.outcome}`),
        el("td", { textContent: formatTime(a.startedAt) }),
        el("td", { textContent: `${a.durationMs} ms` }),
        el("td", { className: "error-text", textContent: a.error || "" }),
      ),
    ),
  );
  if (!attempts.length) $("history").append(el("tr", {}, el("td", { colSpan: 6, className: "empty", textContent: "No attempts yet." })));
  $("history-panel").classList.remove("hidden");
  if (scroll) $("history-panel").scrollIntoView({ behavior: "smooth" });
}

/** What a dead letter is about: the game of a game event, else the start of its body. */
function describe(dead) {
  try {
    const body = JSON.parse(dead.body);
    if (body.gameId) return `${body.action || "event"} game ${body.gameId}`;
  } catch (_) { /* not JSON: show it as text */ }
  return dead.body.length > 60 ? `${dead.body.slice(0, 60)}…` : dead.body;
}

async function actOnDeadLetter(dead, method, path) {
  try {
    await api(path, { method });
    $("dlq-error").textContent = "";
  } catch (error) {
    $("dlq-error").textContent = error.message;
  }
  await loadDeadLetters();
  refresh();
}

function deadLetterRow(dead) {
  const id = encodeURIComponent(dead.id);
  const replay = el("button", { textContent: "Replay", onclick: () => actOnDeadLetter(dead, "POST", `/api/dlq/${id}/replay`) });
  const purge = el("button", { className: "danger", textContent: "Purge", onclick: () => actOnDeadLetter(dead, "DELETE", `/api/dlq/${id}`) });
  replay.dataset.action = "replay";
  purge.dataset.action = "purge";
  replay.dataset.needs = "admin";
  purge.dataset.needs = "admin";
  const row = el(
    "tr",
    {},
    el("td", { textContent: describe(dead) }),
    el("td", { textContent: dead.queue || "" }),
    el("td", { textContent: dead.attempts }),
    el("td", { textContent: formatTime(dead.deadLetteredAt) }),
    el("td", { className: "error-text", textContent: dead.reason || "" }),
    el("td", {}, replay, " ", purge),
  );
  row.dataset.id = dead.id;
  return row;
}

/** One quiet line across the dead-letter table. */
function deadLetterNote(text) {
  $("dlq").replaceChildren(el("tr", {}, el("td", { colSpan: 6, className: "empty", textContent: text })));
}

/** Dead letters hold message bodies: only an admin may read them (GET /api/dlq). */
async function loadDeadLetters() {
  if (!caller.identity) return; // caller.onChange loads them once it is known
  if (!caller.can("admin")) {
    $("dlq-error").textContent = "";
    return deadLetterNote("Log in as an admin to see the dead letters.");
  }
  let dead;
  try {
    dead = await api("/api/dlq?limit=100");
  } catch (error) {
    if (error.status !== 401 && error.status !== 403) throw error;
    return deadLetterNote("Log in as an admin to see the dead letters.");
  }
  $("dlq").replaceChildren(...dead.map(deadLetterRow));
  if (!dead.length) deadLetterNote("No dead letters.");
}

// ---- Dead letters in bulk (admin) ----------------------------------------------------
//
// Counts what the filter matches first and asks before acting. The server acts on the
// oldest 10,000 letters a call; the page calls again while more are left, and meanwhile
// shows the dead-letter queue's depth going down (GET /api/queues, sampled a second).

const DLQ = "game_events.dlq";

async function dlqDepth() {
  const queues = await api("/api/queues");
  const row = queues.find((queue) => queue.name === DLQ);
  return row ? row.ready : null;
}

async function actOnAll(replay) {
  const reason = $("dlq-reason").value.trim();
  const query = reason ? `?reason=${encodeURIComponent(reason)}` : "";
  const what = reason ? `dead letters whose reason contains "${reason}"` : "dead letters";
  const [verb, verbing] = replay ? ["Replayed", "Replaying"] : ["Purged", "Purging"];
  const progress = $("dlq-progress");
  $("dlq-error").textContent = "";
  let watch = null;
  try {
    const counted = await api(`/api/dlq/count${query}`);
    if (!counted.matched) {
      progress.textContent = `No ${what}.`;
      return;
    }
    const more = counted.left ? `, among the oldest ${counted.scanned} (${counted.left} more follow)` : "";
    if (!confirm(`${replay ? "Replay" : "Purge"} ${counted.matched} ${what} of ${DLQ}${more}?`)) return;
    progress.textContent = `${verbing} ${counted.matched} ${what}…`;
    watch = setInterval(async () => {
      const left = await dlqDepth().catch(() => null);
      if (left !== null) progress.textContent = `${verbing}… ${left} left in ${DLQ}`;
    }, 1000);
    let done = 0;
    for (;;) {
      const pass = await api(`/api/dlq${replay ? "/replay" : ""}${query}`, { method: replay ? "POST" : "DELETE" });
      done += pass.done;
      if (!pass.left || !pass.done) break;
    }
    progress.textContent = `${verb} ${done} ${what}.`;
  } catch (error) {
    progress.textContent = "";
    $("dlq-error").textContent = error.message;
  } finally {
    clearInterval(watch);
  }
  await loadDeadLetters();
  refresh();
}

// The forms act as their fields change or their buttons are clicked: Enter submits nothing.
for (const form of [$("task-filters"), $("dlq-bulk")]) form.addEventListener("submit", (event) => event.preventDefault());
// A select fires `change` (and, in most browsers, `input` too): the debounce makes one load.
const filterTasks = debounce(() => loadTasks().catch(console.error), 300);
for (const event of ["input", "change"]) $("task-filters").addEventListener(event, filterTasks);
$("tasks-more").addEventListener("click", () => loadMoreTasks().catch(console.error));

$("dlq-replay-all").addEventListener("click", () => actOnAll(true));
$("dlq-purge-all").addEventListener("click", () => actOnAll(false));

const refresh = debounce(() => {
  loadTasks().catch(console.error);
  loadDeadLetters().catch(console.error);
}, 200);
caller.onChange(() => {
  loadDeadLetters().catch((error) => {
    $("dlq-error").textContent = `Failed to load dead letters: ${error.message}`;
  });
});
liveUpdates(refresh);
loadTasks().catch((error) => {
  $("tasks").replaceChildren(el("tr", {}, el("td", { colSpan: 6, className: "error-text", textContent: `Failed to load: ${error.message}` })));
});
