// The Catalog page: list, search, filter, add/edit/delete, live status.
"use strict";

const state = { nextCursor: null, editing: null, platforms: [], genres: [] };
const $ = (id) => document.getElementById(id);

function query(cursor) {
  const params = new URLSearchParams({ limit: "50", sort: $("sort").value });
  const filters = {
    search: $("search").value.trim(),
    platformId: $("platform-filter").value,
    genreId: $("genre-filter").value,
    yearCategory: $("year-filter").value,
    status: $("status-filter").value,
  };
  for (const [key, value] of Object.entries(filters)) if (value) params.set(key, value);
  if (cursor) params.set("cursor", cursor);
  return `/api/games?${params}`;
}

function gameCard(game) {
  const card = el("article", { className: "game" });
  card.dataset.id = game.id;
  if (game.thumbnailUrl) {
    card.append(el("img", { src: `${game.thumbnailUrl}?v=${game.version}`, alt: `Cover of ${game.title}` }));
  }
  card.append(
    el("h3", { textContent: game.title }),
    el("div", { className: "meta" }, `${game.platformName} · ${game.genreName} · ${game.releaseYear}`),
    el("div", { className: "meta" }, game.developer),
    el("div", {}, statusBadge(game.processingStatus)),
  );
  const edit = el("button", { type: "button", textContent: "Edit", onclick: () => openEditor(game) });
  const remove = el("button", { type: "button", className: "danger", textContent: "Delete", onclick: () => removeGame(game) });
  edit.dataset.action = "edit";
  remove.dataset.action = "delete";
  const actions = el("div", { className: "actions" }, edit, remove);
  actions.dataset.needs = "editor"; // style.css hides them from anyone else
  card.append(actions);
  return card;
}

async function loadGames(append = false) {
  const page = await api(query(append ? state.nextCursor : null));
  const list = $("games");
  if (!append) list.replaceChildren();
  for (const game of page.items) list.append(gameCard(game));
  state.nextCursor = page.nextCursor;
  $("load-more").classList.toggle("hidden", !page.nextCursor);
  $("games-empty").classList.toggle("hidden", list.children.length > 0);
}

async function refreshGame(id) {
  const card = document.querySelector(`.game[data-id="${Number(id)}"]`);
  if (!card) return;
  try {
    card.replaceWith(gameCard(await api(`/api/games/${Number(id)}`)));
  } catch (_) {
    card.remove();
  }
}

function fillSelect(select, items, placeholder) {
  select.replaceChildren(el("option", { value: "", textContent: placeholder }));
  for (const item of items) select.append(el("option", { value: item.id, textContent: item.name }));
}

function clearErrors() {
  $("form-error").textContent = "";
  for (const span of document.querySelectorAll("[data-field-error]")) span.textContent = "";
}

function showProblem(problem) {
  let placed = false;
  for (const { field, reason } of problem.errors || []) {
    const span = document.querySelector(`[data-field-error="${CSS.escape(field)}"]`);
    if (span) {
      span.textContent = reason;
      placed = true;
    }
  }
  if (!placed) $("form-error").textContent = problem.detail || "The game could not be saved.";
}

function openEditor(game) {
  state.editing = game || null;
  const form = $("game-form");
  form.reset();
  clearErrors();
  $("editor-title").textContent = game ? `Edit ${game.title}` : "Add a game";
  if (game) {
    for (const name of ["title", "platformId", "genreId", "developer", "releaseYear", "description"]) {
      form.elements[name].value = game[name] ?? "";
    }
    form.elements.imageUrl.value = game.imageUrl || "";
  }
  form.elements.releaseYear.max = new Date().getFullYear();
  $("editor").classList.remove("hidden");
  form.elements.title.focus();
}

function closeEditor() {
  $("editor").classList.add("hidden");
  state.editing = null;
}

/** Client-side checks mirror the server's; the server's answer is shown too. */
function checkForm(form) {
  const errors = [];
  const year = Number(form.elements.releaseYear.value);
  if (!form.elements.title.value.trim()) errors.push({ field: "title", reason: "must not be empty" });
  if (!form.elements.platformId.value) errors.push({ field: "platformId", reason: "choose a platform" });
  if (!form.elements.genreId.value) errors.push({ field: "genreId", reason: "choose a genre" });
  if (!form.elements.developer.value.trim()) errors.push({ field: "developer", reason: "must not be empty" });
  if (!Number.isInteger(year) || year < 1950 || year > new Date().getFullYear()) {
    errors.push({ field: "releaseYear", reason: `must be between 1950 and ${new Date().getFullYear()}` });
  }
  return errors;
}

async function saveGame(event) {
  event.preventDefault();
  const form = event.target;
  clearErrors();
  const errors = checkForm(form);
  if (errors.length) return showProblem({ errors });
  const body = {
    title: form.elements.title.value,
    platformId: Number(form.elements.platformId.value),
    genreId: Number(form.elements.genreId.value),
    developer: form.elements.developer.value,
    releaseYear: Number(form.elements.releaseYear.value),
    description: form.elements.description.value,
    imageUrl: form.elements.imageUrl.value.trim() || null,
  };
  const path = state.editing ? `/api/games/${state.editing.id}` : "/api/games";
  try {
    const game = await api(path, {
      method: state.editing ? "PUT" : "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const file = form.elements.cover.files[0];
    if (file) {
      await api(`/api/games/${game.id}/cover`, {
        method: "PUT",
        headers: { "content-type": file.type || "application/octet-stream" },
        body: file,
      }).catch((error) => {
        throw Object.assign(error, { problem: { ...error.problem, errors: [{ field: "cover", reason: error.message }] } });
      });
    }
    closeEditor();
    await loadGames();
  } catch (error) {
    showProblem(error.problem || { detail: error.message });
  }
}

async function removeGame(game) {
  if (!confirm(`Delete "${game.title}"?`)) return;
  try {
    await api(`/api/games/${game.id}`, { method: "DELETE" });
    document.querySelector(`.game[data-id="${Number(game.id)}"]`)?.remove();
  } catch (error) {
    if (!error.loginAsked) alert(`Could not delete: ${error.message}`);
  }
}

async function start() {
  [state.platforms, state.genres] = await Promise.all([api("/api/platforms"), api("/api/genres")]);
  fillSelect($("platform-filter"), state.platforms, "All platforms");
  fillSelect($("genre-filter"), state.genres, "All genres");
  fillSelect($("form-platform"), state.platforms, "Choose…");
  fillSelect($("form-genre"), state.genres, "Choose…");
  const reload = debounce(() => loadGames().catch(console.error), 250);
  $("filters").addEventListener("input", reload);
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("add-game").addEventListener("click", () => openEditor(null));
  $("cancel-edit").addEventListener("click", closeEditor);
  $("game-form").addEventListener("submit", saveGame);
  $("load-more").addEventListener("click", () => loadGames(true));
  liveUpdates((kind, data) => {
    if (kind === "resync" || (kind === "game.created" && !document.querySelector(`.game[data-id="${Number(data.gameId)}"]`))) {
      reload();
    } else if (kind === "game.deleted") {
      document.querySelector(`.game[data-id="${Number(data.gameId)}"]`)?.remove();
    } else {
      refreshGame(data.gameId);
    }
  });
  await loadGames();
}

start().catch((error) => {
  $("games").replaceChildren(el("p", { className: "error-text" }, `Failed to load the catalog: ${error.message}`));
});
