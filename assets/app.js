// Shared helpers. Every piece of user data goes into the page as text (textContent),
// never as HTML: a title like <img src=x onerror=alert(1)> shows as written.
"use strict";

/** Builds an element: el("td", {className: "x"}, "text", childNode, ...). */
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** A fetch that throws an Error carrying the server's problem+json. */
async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let problem = { detail: `${response.status} ${response.statusText}` };
    try {
      problem = await response.json();
    } catch (_) { /* not JSON: keep the status line */ }
    const error = new Error(problem.detail || problem.message || "request failed");
    error.problem = problem;
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

function statusBadge(status) {
  return el("span", { className: `status-badge status-${status}`, textContent: status });
}

/** Calls fn at most once per `ms`, with the latest arguments. */
function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** Subscribes to /api/stream; `onEvent(kind, data)` for every game event. */
function liveUpdates(onEvent) {
  const indicator = document.getElementById("live");
  const source = new EventSource("/api/stream");
  const setLive = (online) => {
    indicator.className = online ? "online" : "offline";
    indicator.textContent = online ? "live" : "offline";
  };
  source.onopen = () => setLive(true);
  source.onerror = () => setLive(false);
  for (const kind of ["game.created", "game.updated", "game.deleted", "game.processed", "game.failed", "resync"]) {
    source.addEventListener(kind, (event) => {
      let data = {};
      try {
        data = JSON.parse(event.data);
      } catch (_) { /* keep an empty payload */ }
      onEvent(kind, data);
    });
  }
  return source;
}

function formatTime(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}
