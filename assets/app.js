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

/** Where the login's token is kept: for this tab only, gone when it closes. */
const TOKEN_KEY = "retrocat.token";

/**
 * A fetch that throws an Error carrying the server's problem+json and the status. It
 * sends the kept token, if any. A write refused with 401 opens the login dialog (the
 * page still shows the error where it would); a refused read is left to the page, so
 * its background loads never pop the dialog up.
 */
async function api(path, options = {}) {
  try {
    return await request(path, options);
  } catch (error) {
    const method = (options.method || "GET").toUpperCase();
    if (error.status === 401 && method !== "GET" && method !== "HEAD") {
      error.loginAsked = true;
      caller.refused(error);
    }
    throw error;
  }
}

/** What `api` does, without the login dialog: for the login's own requests. */
async function request(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token && !headers.has("Authorization")) headers.set("Authorization", `Bearer ${token}`);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let problem = { detail: `${response.status} ${response.statusText}` };
    try {
      problem = await response.json();
    } catch (_) { /* not JSON: keep the status line */ }
    const error = new Error(problem.detail || problem.message || "request failed");
    error.problem = problem;
    error.status = response.status;
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

// ---- Who is using the page ---------------------------------------------------------
//
// The page asks GET /api/auth/me when it loads, and again after a login, a logout or a
// refused write. `document.body.dataset.role` says what the caller may do (admin,
// editor, none) and style.css hides what it may not: an element marked
// data-needs="editor" or data-needs="admin", or shown only below a role,
// data-unless="admin". Until the answer comes, both are hidden: no control flashes up
// for someone who may not use it. The server still checks every request; this only
// spares people buttons that would be refused.

const ROLES = ["none", "editor", "admin"];

/** Who is using the page: the API's caller, as GET /api/auth/me describes it. */
const caller = {
  /** {name, role, loginRequired} as GET /api/auth/me answered; null until it has. */
  identity: null,
  listeners: [],

  /** Whether the caller may act as `role` ("editor" or "admin"). */
  can(role) {
    const held = (this.identity && this.identity.role) || "none";
    return ROLES.indexOf(held) >= ROLES.indexOf(role);
  },

  /** Runs `fn` whenever who is using the page becomes known or changes. */
  onChange(fn) {
    this.listeners.push(fn);
    if (this.identity) fn(this.identity);
  },

  /** Asks the server who the caller is. A token it no longer knows is dropped. */
  async refresh() {
    let identity;
    try {
      identity = await request("/api/auth/me");
    } catch (error) {
      if (error.status === 401 && sessionStorage.getItem(TOKEN_KEY)) {
        sessionStorage.removeItem(TOKEN_KEY);
        return this.refresh();
      }
      console.error(error);
      identity = { name: null, role: null, loginRequired: true };
    }
    this.identity = identity;
    document.body.dataset.role = identity.role || "none";
    renderAccount(identity);
    for (const fn of this.listeners) {
      try {
        fn(identity);
      } catch (error) {
        console.error(error); // one page's bug must not stop the others' updates
      }
    }
    return identity;
  },

  /** A write was refused with 401: whatever the page believed, it must log in. */
  async refused(error) {
    const ended = sessionStorage.getItem(TOKEN_KEY) !== null;
    const name = ended && this.identity ? this.identity.name : "";
    sessionStorage.removeItem(TOKEN_KEY);
    await this.refresh();
    loginDialog.open(ended ? `Your login has ended: ${error.message}` : `Log in to do that: ${error.message}`, name);
  },

  async logIn(username, password) {
    const previous = sessionStorage.getItem(TOKEN_KEY);
    const answer = await request("/api/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username, password }),
    });
    if (previous) this.endSession(previous);
    sessionStorage.setItem(TOKEN_KEY, answer.token);
    return this.refresh();
  },

  async logOut() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    sessionStorage.removeItem(TOKEN_KEY);
    if (token) await this.endSession(token);
    return this.refresh();
  },

  /** Ends the login of `token` on the server; one that already ended is fine too. */
  async endSession(token) {
    try {
      await fetch("/api/auth/logout", { method: "POST", headers: { Authorization: `Bearer ${token}` } });
    } catch (error) {
      console.error(error);
    }
  },
};

/**
 * The header's account corner: who is logged in and a way out, a way in when a login
 * is needed, or "loopback (admin)" on a fresh install, where protected mode lets this
 * machine do everything until an account exists.
 */
function renderAccount(identity) {
  let corner = document.getElementById("account");
  if (!corner) {
    corner = el("div", { id: "account", className: "account" });
    (document.querySelector("body > header") || document.body).append(corner);
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token && identity.role) {
    const logOut = el("button", { type: "button", id: "log-out", textContent: "Log out" });
    logOut.addEventListener("click", () => caller.logOut());
    corner.replaceChildren(el("span", { id: "account-name", textContent: `${identity.name} (${identity.role})` }), " · ", logOut);
  } else if (identity.loginRequired) {
    const logIn = el("button", { type: "button", id: "log-in", textContent: "Log in" });
    logIn.addEventListener("click", () => loginDialog.open(""));
    corner.replaceChildren(logIn);
  } else {
    corner.replaceChildren(el("span", {
      id: "account-name",
      textContent: `${identity.name} (${identity.role})`,
      title: "No account exists yet: this machine may do everything until one does (retrocat user add)",
    }));
  }
}

/** The login dialog, one per page, built here so every page has the same. */
const loginDialog = {
  dialog: null,

  build() {
    const form = el(
      "form",
      { id: "login-form", noValidate: true },
      el("h2", { id: "login-title", textContent: "Log in" }),
      el("p", { id: "login-reason", className: "notice" }),
      el("label", {}, "Username", el("input", { name: "username", autocomplete: "username", maxLength: 64, required: true })),
      el("label", {}, "Password", el("input", { name: "password", type: "password", autocomplete: "current-password", maxLength: 1024, required: true })),
      el("p", { id: "login-error", className: "form-error", role: "alert" }),
      el(
        "div",
        { className: "toolbar" },
        el("button", { type: "submit", textContent: "Log in" }),
        el("button", { type: "button", id: "login-cancel", textContent: "Cancel" }),
      ),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit(form);
    });
    form.querySelector("#login-cancel").addEventListener("click", () => this.dialog.close());
    this.dialog = el("dialog", { id: "login-dialog" }, form);
    this.dialog.setAttribute("aria-labelledby", "login-title");
    document.body.append(this.dialog);
  },

  /** Opens the dialog, saying why (`reason`, may be empty), for `username` if known. */
  open(reason, username = "") {
    if (!this.dialog) this.build();
    const form = this.dialog.querySelector("form");
    if (username) form.elements.username.value = username;
    this.dialog.querySelector("#login-reason").textContent = reason;
    this.dialog.querySelector("#login-error").textContent = "";
    form.elements.password.value = "";
    if (!this.dialog.open) this.dialog.showModal();
    (form.elements.username.value ? form.elements.password : form.elements.username).focus();
  },

  async submit(form) {
    const error = this.dialog.querySelector("#login-error");
    error.textContent = "";
    const username = form.elements.username.value.trim();
    const password = form.elements.password.value;
    if (!username || !password) {
      error.textContent = "Enter a username and a password.";
      return;
    }
    try {
      await caller.logIn(username, password);
      form.elements.password.value = "";
      this.dialog.close();
    } catch (failure) {
      error.textContent = failure.message;
      form.elements.password.select();
    }
  },
};

caller.refresh();
