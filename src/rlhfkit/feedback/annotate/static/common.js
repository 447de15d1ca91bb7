// Shared by the three pages: the token (from the URL fragment, then kept in sessionStorage), API calls, markdown.
"use strict";

function takeToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("rlhfkit-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);  // keep the token out of history and screenshots
  }
  return sessionStorage.getItem("rlhfkit-token");
}

async function api(method, path, body) {
  const options = {method, headers: {"Authorization": "Bearer " + (sessionStorage.getItem("rlhfkit-token") || "")}};
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (!response.ok) {
    let detail = data && data.detail !== undefined ? data.detail : text;
    if (Array.isArray(detail)) detail = detail.map(d => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
    const error = new Error(response.status + ": " + detail);
    error.status = response.status;
    throw error;
  }
  return data;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

// A small markdown subset for rubrics: headings, lists, paragraphs, **bold**, *italic*, `code`. HTML is escaped first.
function renderMarkdown(source) {
  const inline = t => escapeHtml(t).replace(/\*\*(.+?)\*\*/g, "<strong>$1</strong>").replace(/\*(.+?)\*/g, "<em>$1</em>")
    .replace(/`(.+?)`/g, "<code>$1</code>");
  const out = [];
  let list = null, paragraph = [];
  const flush = () => {
    if (paragraph.length) { out.push("<p>" + paragraph.map(inline).join(" ") + "</p>"); paragraph = []; }
    if (list) { out.push("<ul>" + list.map(i => "<li>" + inline(i) + "</li>").join("") + "</ul>"); list = null; }
  };
  for (const line of String(source || "").split("\n")) {
    const heading = line.match(/^(#{1,4})\s+(.*)$/);
    const item = line.match(/^\s*[-*]\s+(.*)$/);
    if (heading) { flush(); out.push(`<h${heading[1].length + 2}>${inline(heading[2])}</h${heading[1].length + 2}>`); }
    else if (item) { if (paragraph.length) { const keep = list; list = null; flush(); list = keep; } (list = list || []).push(item[1]); }
    else if (!line.trim()) flush();
    else { if (list) flush(); paragraph.push(line); }
  }
  flush();
  return out.join("\n");
}

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits);
}

function pct(value) {
  return value === null || value === undefined ? "n/a" : Math.round(100 * value) + "%";
}
