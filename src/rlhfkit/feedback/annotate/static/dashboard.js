"use strict";
const project = decodeURIComponent(location.pathname.split("/")[2] || "");

function rows(selector, items, cells) {
  const body = document.querySelector(selector + " tbody");
  body.innerHTML = items.map(item => "<tr>" + cells(item).map(c => `<td>${c}</td>`).join("") + "</tr>").join("")
    || `<tr><td colspan="9" class="muted">none yet</td></tr>`;
}

async function load() {
  try {
    const d = await api("GET", `/api/projects/${encodeURIComponent(project)}/dashboard`);
    const p = d.progress, a = d.agreement || {};
    document.getElementById("progress").innerHTML =
      `<p><strong>${p.complete}</strong> of ${p.pairs} main pairs have ${d.project.overlap} human judgments (${pct(p.complete_share)}); ` +
      `${p.started} started, ${p.disputed} disputed, ${p.resampled} re-presented to more annotators.</p>` +
      `<p>${p.human_judgments} human and ${p.machine_judgments} machine judgments; ${p.calibration_pairs} calibration and ${p.anchor_pairs} anchor pairs.</p>`;
    document.querySelector("#agreement tbody").innerHTML = [
      ["Raw agreement (mean over annotator pairs)", fmt(a.raw_agreement)],
      ["Cohen's kappa (mean over annotator pairs)", fmt(a.mean_cohen_kappa)],
      ["Fleiss' kappa", fmt(a.fleiss_kappa) + (a.fleiss_items ? ` <span class="muted">(${a.fleiss_items} pairs with ${a.fleiss_raters} raters)</span>` : "")],
      ["Krippendorff's alpha (nominal)", fmt(a.krippendorff_alpha)],
    ].map(([k, v]) => `<tr><th>${k}</th><td class="value">${v}</td></tr>`).join("");
    rows("#kappa-pairs", Object.keys(a.shared_items || {}), key => [escapeHtml(key.replace("|", " / ")), a.shared_items[key],
      fmt(a.percent_agreement[key]), fmt(a.cohen_kappa[key])]);
    const bias = d.position_bias;
    document.getElementById("position-bias").textContent = bias.decisive
      ? `The response shown on the left won ${pct(bias.left_share)} of ${bias.decisive} decisive judgments (50% means no position bias).`
      : "No decisive judgments yet.";
    rows("#annotators", d.annotators, x => [escapeHtml(x.name), x.judgments,
      `${x.calibration.state} (${pct(x.calibration.agreement)})`, pct(x.agreement_with_others),
      `${pct(x.anchor_accuracy)} <span class="muted">(${x.anchor_judgments})</span>`,
      (x.anchor_trend.map(t => pct(t.accuracy)).join(" → ") || "-") + (x.drift !== null ? ` (drift ${x.drift >= 0 ? "+" : ""}${Math.round(100 * x.drift)} pts)` : ""),
      pct(x.position_bias.left_share), escapeHtml(Object.entries(x.choices).map(([k, v]) => `${k} ${v}`).join(", ")),
      x.median_seconds === null ? "n/a" : x.median_seconds.toFixed(1)]);
    rows("#machines", d.machine_annotators, m => [escapeHtml(m.name), m.kind, m.judgments, m.shared_with_human_majority,
      pct(m.agreement_with_human_majority), fmt(m.kappa_with_human_majority), pct(m.position_bias.left_share)]);
    rows("#overrides", d.overrides, o => [escapeHtml(o.annotator), escapeHtml(o.admin), escapeHtml(o.reason), pct(o.agreement), o.at]);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.ready = "1";
  } catch (error) {
    const box = document.getElementById("message");
    box.textContent = error.message;
    box.className = "message error";
    box.hidden = false;
  }
}

document.getElementById("project-name").textContent = project;
document.getElementById("refresh").addEventListener("click", load);
if (takeToken()) { load(); setInterval(load, 15000); }
else { const box = document.getElementById("message"); box.textContent = "No token: open /admin first."; box.hidden = false; }
