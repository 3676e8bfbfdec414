// The explorer page of `sidrec serve`: search items, build a history by clicking,
// recommend, add an item. Plain DOM + fetch against the server's own JSON API; text from
// the catalogue is only ever set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const picked = [];  // the history: [{id, title, cold}], oldest first
let searchTimer = null;
let searchTicket = 0;  // answers that arrive after a newer request are dropped
let recommendTicket = 0;

// A server with API keys answers 401 without one: the page asks for a key and keeps it
// in this page's memory only (never in storage), sending it as a bearer token.
let apiKey = "";

async function api(path, body, retried = false) {
  const sent = apiKey;
  const headers = body === undefined ? {} : {"Content-Type": "application/json"};
  if (sent) headers["Authorization"] = `Bearer ${sent}`;
  const options = body === undefined ? {headers} : {
    method: "POST", headers, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  if (response.status === 401 && !retried) {
    if (apiKey === sent) {  // none yet, or this one was refused: ask (once per refusal)
      apiKey = (window.prompt("This server needs an API key:") || "").trim();
    }
    if (apiKey) return api(path, body, true);
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const where = data.field ? ` (${data.field})` : "";
    throw new Error(`${response.status}: ${data.error || response.statusText}${where}`);
  }
  return data;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function badge(item) {
  return item.cold ? el("span", "badge", "new item") : null;
}

function itemRow(tag, item, onClick) {
  const row = el(tag, "item");
  row.dataset.id = item.id;
  row.append(el("span", "title", item.title), el("span", "id", item.id));
  const b = badge(item);
  if (b) row.append(b);
  if (onClick) row.addEventListener("click", onClick);
  return row;
}

async function showInfo() {
  try {
    const info = await api("/v1/info");
    $("model-info").textContent =
      `model ${info.model} · ${info.n_items.toLocaleString()} items` +
      (info.n_added ? ` (${info.n_added} added)` : "");
    if (!info.supports_new_items) {
      $("add-status").textContent = `${info.model} ranks only items seen in training.`;
    }
  } catch (e) {
    $("model-info").textContent = `not ready: ${e.message}`;
  }
}

async function search() {
  const list = $("results");
  const ticket = ++searchTicket;
  try {
    const q = encodeURIComponent($("search").value);
    const data = await api(`/v1/items?q=${q}&limit=25`);
    if (ticket !== searchTicket) return;
    list.replaceChildren(...data.items.map((item) =>
      itemRow("li", item, () => addToHistory(item))));
    if (!data.items.length) list.replaceChildren(el("li", "hint", "no match"));
  } catch (e) {
    list.replaceChildren(el("li", "error", e.message));
  }
}

function renderHistory() {
  $("history").replaceChildren(...picked.map((item, n) => {
    const row = itemRow("li", item);
    const remove = el("button", "remove", "×");
    remove.title = "remove";
    remove.addEventListener("click", () => { picked.splice(n, 1); renderHistory(); recommend(); });
    row.append(remove);
    return row;
  }));
  $("history-empty").hidden = picked.length > 0;
}

function addToHistory(item) {
  picked.push({id: item.id, title: item.title, cold: item.cold});
  renderHistory();
  recommend();
}

async function recommend() {
  const body = {
    history: picked.map((item) => item.id),
    k: Number($("k").value) || 10,
    exclude_seen: $("exclude-seen").checked,
  };
  const user = $("user").value.trim();
  if (user) body.user_id = user;
  const tbody = $("recs").tBodies[0];
  const ticket = ++recommendTicket;
  try {
    const data = await api("/v1/recommend", body);
    if (ticket !== recommendTicket) return;
    $("recs").dataset.history = body.history.join(",");
    tbody.replaceChildren(...data.items.map((item, n) => {
      const row = el("tr");
      row.dataset.id = item.id;
      const title = el("td", "title", item.title);
      const b = badge(item);
      if (b) title.append(" ", b);
      row.append(el("td", "num", String(n + 1)), title, el("td", "id", item.id),
                 el("td", "num", item.score.toFixed(4)));
      row.addEventListener("click", () => addToHistory(item));
      return row;
    }));
    $("status").className = "hint";
    $("status").textContent = `${data.items.length} items from ${data.model} in ` +
      `${data.took_ms.toFixed(1)} ms` + (picked.length ? "" : " (popular: no history yet)");
  } catch (e) {
    tbody.replaceChildren();
    $("status").className = "error";
    $("status").textContent = e.message;
  }
}

async function addItem(event) {
  event.preventDefault();
  const id = $("new-id").value.trim();
  const text = $("new-text").value.trim();
  const status = $("add-status");
  try {
    const data = await api("/v1/items", [{id, text}]);
    status.className = "hint";
    status.textContent = `added ${data.added.join(", ")}; the catalogue has ` +
      `${data.n_items.toLocaleString()} items`;
    const added = await api(`/v1/items/${encodeURIComponent(id)}`);
    $("search").value = added.title;
    $("new-id").value = "";
    $("new-text").value = "";
    await Promise.all([showInfo(), search(), recommend()]);
  } catch (e) {
    status.className = "error";
    status.textContent = e.message;
  }
}

$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(search, 200);
});
$("recommend").addEventListener("click", recommend);
$("clear").addEventListener("click", () => { picked.length = 0; renderHistory(); recommend(); });
$("add-form").addEventListener("submit", addItem);
["k", "exclude-seen", "user"].forEach((id) => $(id).addEventListener("change", recommend));

showInfo();
recommend();
search();
renderHistory();
