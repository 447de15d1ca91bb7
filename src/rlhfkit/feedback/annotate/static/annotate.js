"use strict";
const project = decodeURIComponent(location.pathname.split("/")[2] || "");
let current = null, choice = null, criteria = {}, busy = false;

function show(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = "message" + (isError ? " error" : "");
  box.hidden = !text;
}

function renderProgress(result) {
  const p = result.progress, cal = result.calibration;
  document.getElementById("phase").textContent = cal.total && !cal.open
    ? `Calibration: ${p.calibration_done} of ${p.calibration_total}` : "Main queue";
  document.getElementById("progress").textContent = `Labelled: ${p.judged}` + (p.remaining !== null ? ` · about ${p.remaining} left` : "");
}

function renderCriteria(names) {
  const box = document.getElementById("criteria");
  box.innerHTML = "";
  for (const name of names) {
    const row = document.createElement("div");
    row.className = "criterion";
    row.dataset.criterion = name;
    row.innerHTML = `<strong>${escapeHtml(name)}:</strong> ` + [["left", "A"], ["right", "B"], ["tie", "Tie"], ["both_bad", "Both bad"]]
      .map(([value, label]) => `<button type="button" data-value="${value}">${label}</button>`).join("");
    row.addEventListener("click", event => {
      const value = event.target.dataset && event.target.dataset.value;
      if (!value) return;
      criteria[name] = value;
      row.querySelectorAll("button").forEach(b => b.classList.toggle("selected", b.dataset.value === value));
    });
    box.appendChild(row);
  }
}

function select(value) {
  choice = value;
  document.querySelectorAll("#choices button").forEach(b => b.classList.toggle("selected", b.dataset.choice === value));
}

async function loadNext() {
  const result = await api("POST", `/api/projects/${encodeURIComponent(project)}/next`);
  renderProgress(result);
  current = result.assignment;
  choice = null;
  criteria = {};
  select(null);
  document.getElementById("rationale").value = "";
  const item = document.getElementById("item");
  if (result.state !== "assignment") {
    item.hidden = true;
    const cal = result.calibration;
    if (result.state === "calibration_failed")
      show(`Your calibration agreement is ${pct(cal.agreement)}, under the project's threshold of ${pct(cal.threshold)}. ` +
           "The main queue stays closed until an admin reviews it.");
    else if (result.state === "waiting")
      show("Calibration done. Your agreement is measured against the other annotators, who have not finished yet; check back soon.");
    else show("Nothing left in your queue. Thank you!");
    document.body.dataset.state = result.state;
    return;
  }
  show("");
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();  // keys work again
  document.getElementById("prompt").textContent = current.prompt;
  document.getElementById("left").textContent = current.left;
  document.getElementById("right").textContent = current.right;
  renderCriteria(current.criteria);
  item.hidden = false;
  document.body.dataset.state = "assignment";
  document.body.dataset.assignment = current.id;
}

async function submit() {
  if (busy || !current) return;
  if (!choice) { show("Pick A, B, tie or both bad first (keys 1-4).", true); return; }
  busy = true;
  try {
    const rationale = document.getElementById("rationale").value.trim();
    await api("POST", `/api/projects/${encodeURIComponent(project)}/assignments/${current.id}/judgment`,
              {choice, rationale: rationale || null, criteria});
    await loadNext();
  } catch (error) {
    show("Not saved: " + error.message + ". Try again.", true);
  } finally {
    busy = false;
  }
}

document.getElementById("choices").addEventListener("click", event => {
  const button = event.target.closest("button");
  if (button) select(button.dataset.choice);
});
document.getElementById("submit").addEventListener("click", submit);
document.addEventListener("keydown", event => {
  if (event.target.tagName === "TEXTAREA" || event.target.tagName === "INPUT") {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); submit(); }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const keys = {"1": "left", "a": "left", "2": "right", "b": "right", "3": "tie", "t": "tie", "4": "both_bad", "x": "both_bad"};
  const value = keys[event.key.toLowerCase()];
  if (value && current) { event.preventDefault(); select(value); }
  else if (event.key === "Enter" && current) { event.preventDefault(); submit(); }
});

(async function start() {
  document.getElementById("project-name").textContent = project;
  if (!takeToken()) { show("No token: open the link from your invitation.", true); return; }
  try {
    const me = await api("GET", `/api/projects/${encodeURIComponent(project)}/me`);
    document.getElementById("who").textContent = "as " + me.name;
    document.getElementById("rubric").innerHTML = renderMarkdown(me.project.rubric) || "<p class='muted'>(no rubric)</p>";
    await loadNext();
  } catch (error) {
    show(error.message, true);
  }
})();
