// The Queues page: what each queue holds and how fast it moves (GET /api/queues), and
// charts of the last 15 minutes (GET /api/queues/history). Both are polled: the server
// answers from its background sampler, so a poll costs the broker nothing.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const WINDOW_SECONDS = 15 * 60;
const UNKNOWN = "–";

/** Series colours that read on black; the first four are style.css's. */
const PALETTE = ["#33ff33", "#33ccff", "#ffcc00", "#ff3366", "#cc66ff", "#99ff99", "#ff9933", "#66ffcc"];
const OUTCOMES = [
  ["completed", "#33ff33"],
  ["retried", "#ffcc00"],
  ["failed", "#ff3366"],
  ["dead_lettered", "#cc66ff"],
  ["duplicate", "#33ccff"],
];

/** Runs `load` now, then POLL_MS after each run ends: a slow answer never piles up requests. */
function poll(load) {
  const tick = async () => {
    try {
      await load();
    } catch (error) {
      console.error(error); // a bug in one poll must not stop the next
    }
    setTimeout(tick, POLL_MS);
  };
  tick();
}

// ---- The table -------------------------------------------------------------------

const known = (value) => value !== null && value !== undefined;
const count = (n) => (known(n) ? String(n) : UNKNOWN);
const rate = (perSecond) => (known(perSecond) ? perSecond.toFixed(1) : UNKNOWN);

function age(seconds) {
  if (!known(seconds)) return UNKNOWN;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
}

// ---- Pause and resume (admin) ---------------------------------------------------------
//
// The table comes from the server's sampler, a second behind at most: what a pause or
// resume answered is shown until a sample agrees with it, so the button never flips back.

/** Queue name → paused, as the last pause or resume answered. */
const answered = new Map();

function isPaused(queue) {
  if (!answered.has(queue.name)) return queue.paused;
  if (answered.get(queue.name) === queue.paused) answered.delete(queue.name);
  return answered.has(queue.name) ? answered.get(queue.name) : queue.paused;
}

async function setPaused(name, pause) {
  try {
    const state = await api(`/api/queues/${encodeURIComponent(name)}/${pause ? "pause" : "resume"}`, { method: "POST" });
    answered.set(name, state.paused);
    $("queues-error").textContent = "";
  } catch (error) {
    $("queues-error").textContent = `${pause ? "Pause" : "Resume"} ${name}: ${error.message}`;
  }
  await loadQueues();
}

function pauseButton(queue, paused) {
  if (!queue.pausable) return null;
  const button = el("button", {
    textContent: paused ? "Resume" : "Pause",
    title: paused
      ? "Every worker consumes this queue again within a second"
      : "Every worker stops taking from this queue within a second; its messages wait",
    onclick: () => setPaused(queue.name, !paused),
  });
  button.dataset.action = paused ? "resume" : "pause";
  button.dataset.needs = "admin";
  return button;
}

function queueRow(queue) {
  const num = (text) => el("td", { className: "num", textContent: text });
  const paused = isPaused(queue);
  const row = el(
    "tr",
    {},
    el("td", { textContent: queue.name }),
    num(count(queue.ready)),
    num(count(queue.unacked)),
    num(count(queue.delayed)),
    num(count(queue.consumers)),
    el("td", {}, paused ? statusBadge("paused") : null),
    num(rate(queue.publishRate)),
    num(rate(queue.deliverRate)),
    num(rate(queue.ackRate)),
    num(age(queue.oldestAgeSeconds)),
    el("td", { textContent: queue.source || "" }),
    el("td", {}, pauseButton(queue, paused)),
  );
  row.dataset.queue = queue.name;
  row.dataset.paused = String(paused);
  return row;
}

/** One worker's open (or half-open) breaker for one cover host. */
function circuitItem(circuit) {
  const until = new Date(circuit.until).toLocaleTimeString();
  const item = el("li", {
    textContent: `${circuit.target}: ${circuit.state} until ${until} (worker ${circuit.worker})`,
  });
  item.dataset.target = circuit.target;
  item.dataset.state = circuit.state;
  return item;
}

function showCircuits(queues) {
  const circuits = queues.flatMap((queue) => queue.circuits || []);
  $("circuits").replaceChildren(...circuits.map(circuitItem));
  $("circuits-panel").hidden = circuits.length === 0;
}

async function loadQueues() {
  try {
    const queues = await api("/api/queues");
    $("queues").replaceChildren(...queues.map(queueRow));
    showCircuits(queues);
    $("queues-error").textContent = "";
  } catch (error) {
    // Keep the last rows on screen: a missed poll says nothing about the queues.
    $("queues-error").textContent = `Failed to load the queues: ${error.message}`;
  }
}

// ---- The charts ------------------------------------------------------------------

const AXIS = {
  stroke: "#33ff33",
  font: '12px "Courier New", Courier, monospace',
  labelFont: '12px "Courier New", Courier, monospace',
  grid: { stroke: "#0d2b0d", width: 1 },
  ticks: { stroke: "#1a9e1a", width: 1 },
};

/** A number from a sample's map, or null (a gap in the line) when unknown. */
const pick = (map, key) => (map && typeof map[key] === "number" ? map[key] : null);

function depthSeries(samples) {
  const names = [...new Set(samples.flatMap((sample) => Object.keys(sample.depths || {})))];
  // The outbox first: it is where every event starts.
  names.sort((a, b) => (a === "outbox" ? -1 : b === "outbox" ? 1 : a.localeCompare(b)));
  return names.map((name, i) => ({
    label: name,
    stroke: PALETTE[i % PALETTE.length],
    values: samples.map((sample) => pick(sample.depths, name)),
  }));
}

function processedSeries(samples) {
  // The five outcomes of the contract in their own colours, then any other the server
  // reports (forwarded, skipped) rather than hiding it.
  const colours = new Map(OUTCOMES);
  const others = new Set(samples.flatMap((sample) => Object.keys(sample.processed || {})));
  for (const outcome of colours.keys()) others.delete(outcome);
  [...others].sort().forEach((outcome, i) => colours.set(outcome, PALETTE[(5 + i) % PALETTE.length]));
  return [...colours].map(([outcome, stroke]) => ({
    label: outcome,
    stroke,
    values: samples.map((sample) => pick(sample.processed, outcome)),
  }));
}

function latencySeries(samples) {
  const ms = (sample, key) => {
    const seconds = pick(sample.latency, key);
    return seconds === null ? null : seconds * 1000;
  };
  return [["p50", "#33ff33"], ["p99", "#ffcc00"]].map(([key, stroke]) => ({
    label: key,
    stroke,
    values: samples.map((sample) => ms(sample, key)),
  }));
}

/** Sets data-points on the chart's container to the samples it drew (any non-null value). */
function markDrawn(container, plot) {
  const [xs, ...ys] = plot.data;
  const drawn = xs.filter((_, i) => ys.some((values) => known(values[i]))).length;
  if (drawn > 0) container.dataset.points = String(drawn);
  else delete container.dataset.points;
}

/**
 * A live chart in the element `id`: `update(samples)` redraws it, `say(text)` shows a
 * note above it. `series(samples)` gives its lines; the chart is rebuilt when their
 * labels change (a queue appears), otherwise only its data is replaced.
 */
function liveChart(id, series, unit) {
  const container = $(id);
  const note = document.querySelector(`[data-note-for="${id}"]`);
  const size = () => ({ width: Math.max(container.clientWidth, 200), height: 220 });
  let plot = null;
  let labels = null;

  // Follow the panel's width; the height is fixed, so this cannot feed back on itself.
  new ResizeObserver(() => {
    if (plot && plot.width !== size().width) plot.setSize(size());
  }).observe(container);

  const build = (lines, data) => {
    if (plot) plot.destroy();
    labels = lines.map((line) => line.label).join("\n");
    plot = new uPlot(
      {
        ...size(),
        // A fixed 15-minute window ending at the newest sample, which fills from the right.
        scales: {
          x: { time: true, range: (u, min, max) => [max - WINDOW_SECONDS, max] },
          y: { range: (u, min, max) => [0, Math.max(max || 0, 1) * 1.05] },
        },
        series: [{}, ...lines.map(({ label, stroke }) => ({ label, stroke, width: 1.5 }))],
        axes: [AXIS, { ...AXIS, label: unit, size: 60 }],
        cursor: { points: { size: 6 } },
        hooks: { draw: [(u) => markDrawn(container, u)] },
      },
      data,
      container,
    );
  };

  return {
    say(text) {
      note.textContent = text;
    },
    update(samples) {
      if (!samples.length) {
        if (plot) plot.destroy();
        plot = null;
        labels = null;
        delete container.dataset.points;
        this.say("No samples yet.");
        return;
      }
      const lines = series(samples);
      const data = [samples.map((sample) => sample.at / 1000), ...lines.map((line) => line.values)];
      if (plot && labels === lines.map((line) => line.label).join("\n")) plot.setData(data);
      else build(lines, data);
      this.say("");
    },
  };
}

const charts = [
  liveChart("chart-depth", depthSeries, "messages"),
  liveChart("chart-processed", processedSeries, "events/s"),
  liveChart("chart-latency", latencySeries, "ms"),
];

async function loadHistory() {
  let history;
  try {
    history = await api("/api/queues/history");
  } catch (error) {
    // Keep what was drawn; say why it stopped moving.
    for (const chart of charts) chart.say(`History unavailable: ${error.message}`);
    return;
  }
  for (const chart of charts) chart.update(history.samples || []);
}

poll(loadQueues);
poll(loadHistory);
