// The page's Performance panel and autotuning status: GPU time per op kind for the last run
// (sdweb.backends.webgpu.profile through the worker: ms, GFLOP/s, % of the adapter's measured peak),
// and the "tuning kernels for this GPU" line while sdweb.backends.webgpu.tuning times kernel
// configurations on first use. app.js calls these three; the panel is <section id="perf">.

const fmt = (v, digits) => (v === null || v === undefined ? "" : Number(v).toFixed(digits));
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

// A progress event {stage: "tuning", tuned, seconds, budget, op, choice} -> the status line's text.
export function tuningText(ev) {
  return `Tuning kernels for this GPU (first use; remembered for next time): ${ev.tuned} shape${ev.tuned === 1 ? "" : "s"}, ` +
    `${fmt(ev.seconds, 1)} of ${fmt(ev.budget, 0)} s…`;
}

function table(title, rows) {
  const body = rows.map((r) => `<tr${r.op === "total" ? ' class="total"' : ""}><td>${esc(r.op)}</td>` +
    `<td>${fmt(r.dispatches, 0)}</td><td>${fmt(r.ms, 2)}</td><td>${fmt(r.gflops, 1)}</td><td>${fmt(r.gbps, 1)}</td>` +
    `<td>${fmt(r.percent_of_peak, 1)}</td></tr>`).join("");
  return `<h3>${esc(title)}</h3><table class="perf"><thead><tr><th>op</th><th>dispatches</th><th>ms</th>` +
    `<th>GFLOP/s</th><th>GB/s</th><th>% of peak</th></tr></thead><tbody>${body}</tbody></table>`;
}

// perf: the result's {requested, available, why, adapter, emulated, peaks, stages: {text_encoder, unet,
// vae: rows, unet_steps_ms}, computes, tuning: summary} (or null when not asked for).
export function showPerf(perf) {
  const panel = document.getElementById("perf");
  const out = document.getElementById("perf-body");
  if (!panel || !out) return;
  if (!perf) { panel.hidden = true; return; }
  panel.hidden = false;
  const parts = [];
  if (perf.tuning) parts.push(`<p class="hint">Autotuning: ${esc(perf.tuning)}</p>`);
  if (!perf.available) {
    parts.push(`<p>GPU time per op kind is not available here: ${esc(perf.why)}</p>`);
    out.innerHTML = parts.join("");
    return;
  }
  const p = perf.peaks || {};
  parts.push(`<p class="hint">${esc(perf.adapter)}${perf.emulated ? " (emulated on the CPU: not a GPU's figures)" : ""}` +
    ` · measured peak: f32 ${fmt(p.f32_gflops, 1)} GFLOP/s` + (p.f16_gflops ? `, f16 ${fmt(p.f16_gflops, 1)} GFLOP/s` : "") +
    `, copy ${fmt(p.copy_gbps, 1)} GB/s · % of peak is against the FMA peak for linear, conv2d and attention, ` +
    `against the copy bandwidth for the rest (timestamp queries, one compute pass per dispatch)</p>`);
  const titles = { text_encoder: "Text encoder", unet: "UNet, per step (mean after the first)", vae: "VAE decode" };
  for (const stage of ["text_encoder", "unet", "vae"]) {
    if (perf.stages[stage]) parts.push(table(`${titles[stage]} · ${perf.computes[stage]} compute`, perf.stages[stage]));
  }
  const steps = perf.stages.unet_steps_ms || [];
  if (steps.length) parts.push(`<p class="hint">UNet steps (ms): ${steps.map((t) => fmt(t, 1)).join(", ")}</p>`);
  out.innerHTML = parts.join("");
}
