"use strict";
let selected = null;

function show(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = "message" + (isError ? " error" : "");
  box.hidden = !text;
}

async function run(action) {
  try { await action(); } catch (error) { show(error.message, true); }
}

async function loadProjects() {
  const projects = await api("GET", "/api/projects");
  const body = document.querySelector("#projects tbody");
  body.innerHTML = "";
  for (const p of projects) {
    const row = document.createElement("tr");
    row.innerHTML = `<td>${escapeHtml(p.name)}</td><td>${p.pairs.main}</td><td>${p.pairs.calibration}</td><td>${p.pairs.anchor}</td>` +
      `<td>${p.overlap}</td><td><button type="button" class="manage">manage</button> <a href="/admin/${encodeURIComponent(p.name)}/dashboard">dashboard</a></td>`;
    row.querySelector(".manage").addEventListener("click", () => run(() => manage(p.name)));
    body.appendChild(row);
  }
}

async function manage(name) {
  selected = name;
  document.getElementById("manage").hidden = false;
  document.getElementById("manage-name").textContent = name;
  document.getElementById("dashboard-link").href = `/admin/${encodeURIComponent(name)}/dashboard`;
  document.getElementById("invite-result").innerHTML = "";
  await loadAnnotators();
}

async function loadAnnotators() {
  const people = await api("GET", `/api/projects/${encodeURIComponent(selected)}/annotators`);
  const body = document.querySelector("#annotators tbody");
  body.innerHTML = "";
  for (const a of people) {
    const cal = a.calibration;
    const row = document.createElement("tr");
    row.dataset.annotator = a.name;
    row.innerHTML = `<td>${escapeHtml(a.name)}</td><td>${a.kind}</td><td>${a.judgments}</td>` +
      `<td>${cal ? cal.state + " (" + cal.done + "/" + cal.total + ")" : "-"}</td><td>${cal ? pct(cal.agreement) : "-"}</td>` +
      `<td>${cal && !cal.open ? '<input type="text" class="reason" placeholder="reason"> <button type="button" class="override">open main queue</button>' : ""}</td>`;
    const button = row.querySelector(".override");
    if (button) button.addEventListener("click", () => run(async () => {
      const reason = row.querySelector(".reason").value.trim();
      if (!reason) { show("Give a reason for the override; it is recorded.", true); return; }
      await api("POST", `/api/projects/${encodeURIComponent(selected)}/annotators/${encodeURIComponent(a.name)}/override`, {reason});
      show(`Main queue opened for ${a.name}; override recorded.`);
      await loadAnnotators();
    }));
    body.appendChild(row);
  }
}

async function upload(inputId, path, extra) {
  const file = document.getElementById(inputId).files[0];
  if (!file) { show("Choose a file first.", true); return null; }
  return api("POST", `/api/projects/${encodeURIComponent(selected)}/${path}`, {jsonl: await file.text(), filename: file.name, ...extra});
}

document.getElementById("create-form").addEventListener("submit", event => {
  event.preventDefault();
  run(async () => {
    const form = new FormData(event.target);
    const number = key => form.get(key) === "" ? null : Number(form.get(key));
    const settings = {
      name: form.get("name").trim(), rubric: form.get("rubric"),
      criteria: form.get("criteria").split(",").map(c => c.trim()).filter(Boolean),
      overlap: number("overlap"), max_judgments: number("max_judgments"), agreement_threshold: number("agreement_threshold"),
      anchor_rate: number("anchor_rate"), batch_size: number("batch_size"), dispute_below: number("dispute_below"),
      margin_below: number("margin_below"), sample_by: form.get("sample_by"), disagreement_above: number("disagreement_above"),
    };
    const project = await api("POST", "/api/projects", settings);
    show(`Created project ${project.name}.`);
    event.target.reset();
    await loadProjects();
    await manage(project.name);
  });
});

document.getElementById("pairs-import").addEventListener("click", () => run(async () => {
  const result = await upload("pairs-file", "pairs", {role: document.getElementById("pairs-role").value});
  if (result) { show(`Imported ${result.imported} ${result.role} pairs.`); await loadProjects(); }
}));
document.getElementById("judgments-import").addEventListener("click", () => run(async () => {
  const result = await upload("judgments-file", "machine-judgments", {kind: document.getElementById("judgments-kind").value});
  if (result) { show(`Imported ${result.imported} machine judgments (${result.already_stored} already stored).`); await loadAnnotators(); }
}));
document.getElementById("margins-import").addEventListener("click", () => run(async () => {
  const result = await upload("margins-file", "margins", {});
  if (result) show(`Stored ${result.imported} reward margins.`);
}));
document.getElementById("invite-button").addEventListener("click", () => run(async () => {
  const name = document.getElementById("invite-name").value.trim();
  if (!name) { show("Give the annotator a name.", true); return; }
  const result = await api("POST", `/api/projects/${encodeURIComponent(selected)}/annotators`, {name});
  const box = document.getElementById("invite-result");
  const line = document.createElement("p");
  line.innerHTML = `Send <strong>${escapeHtml(result.name)}</strong> this link (shown once): <a class="invite-link" data-annotator="${escapeHtml(result.name)}" href="${escapeHtml(result.url)}">${escapeHtml(result.url)}</a>`;
  box.appendChild(line);
  document.getElementById("invite-name").value = "";
  await loadAnnotators();
}));
document.getElementById("export-link").addEventListener("click", event => {
  event.preventDefault();
  run(async () => {
    const response = await fetch(`/api/projects/${encodeURIComponent(selected)}/export.jsonl`,
                                 {headers: {"Authorization": "Bearer " + sessionStorage.getItem("rlhfkit-token")}});
    if (!response.ok) throw new Error(response.status + ": " + (await response.text()));
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = `${selected}-preferences.jsonl`;
    link.click();
  });
});
document.getElementById("token-button").addEventListener("click", () => {
  sessionStorage.setItem("rlhfkit-token", document.getElementById("token-input").value.trim());
  start();
});

async function start() {
  if (!takeToken()) { document.getElementById("login").hidden = false; return; }
  try {
    const me = await api("GET", "/api/whoami");
    if (me.role !== "admin") { show("This token is an annotator's; the admin page needs an admin token.", true); return; }
    document.getElementById("login").hidden = true;
    document.getElementById("who").textContent = "as " + me.name;
    document.body.dataset.ready = "1";
    await loadProjects();
  } catch (error) {
    document.getElementById("login").hidden = false;
    show(error.message, true);
  }
}
start();
