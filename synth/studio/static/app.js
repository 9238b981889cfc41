// synth studio: one page, hash routes (#/browse?..., #/sample/RUN/ID, #/compare?..., #/generate?...,
// #/report?run=...). Every piece of user text reaches the page as a text node: no innerHTML.
"use strict";

const state = { runs: [], run: null, details: {} };
const view = () => document.getElementById("view");

// --- small helpers --------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Seeds reach 2^63: JSON numbers past 2^53 stay exact as strings.
function parseJSON(text) {
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && Number.isInteger(value) && context && context.source
      ? context.source : value);
}

async function api(path, options) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = parseJSON(await response.text()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}
const getJSON = async (path) => parseJSON(await (await api(path)).text());

function say(message, kind) {
  const box = document.getElementById("status");
  box.hidden = !message;
  box.className = kind || "";
  box.textContent = message || "";
}

function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "browse";
  const [path, query] = hash.split("?");
  return { parts: path.split("/").map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

function setURL(name, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== "" && value !== null && value !== undefined) query.set(key, value);
  history.replaceState(null, "", `#/${name}?${query}`);
}

const imageURL = (run, id, attempt) =>
  `/api/samples/${encodeURIComponent(run)}/${encodeURIComponent(id)}/image` + (attempt ? `?attempt=${attempt}` : "");
const realURL = (run, id) => `/api/real/${encodeURIComponent(run)}/image?id=${encodeURIComponent(id)}`;
const fmt = (value) => typeof value === "number" && !Number.isInteger(value) ? value.toFixed(3) : String(value);

async function details(run) {
  if (!state.details[run]) state.details[run] = await getJSON(`/api/runs/${encodeURIComponent(run)}`);
  return state.details[run];
}

function propsTable(row, skip) {
  return h("table", { class: "props" }, Object.entries(row)
    .filter(([key, value]) => !(skip || []).includes(key) && value !== null && value !== undefined)
    .map(([key, value]) => h("tr", {}, h("td", {}, key), h("td", {}, fmt(value)))));
}

function select(options, value, attrs) {
  return h("select", attrs, options.map(([v, label]) => h("option", { value: v, selected: String(v) === String(value) }, label)));
}

// --- browse ---------------------------------------------------------------------------------

const FILTERS = ["label", "q", "seed", "attempt", "status", "source", "min_label_score", "max_label_score",
  "min_real_similarity", "max_real_similarity", "passed", "flagged", "limit", "offset"];

async function browse(params) {
  const run = params.get("run") || state.run;
  const info = await details(run);
  const filters = Object.fromEntries(FILTERS.map((key) => [key, params.get(key) || ""]));
  const grid = h("div", { class: "grid", id: "grid" });
  const summary = h("span", { class: "muted", id: "count" });
  const prev = h("button", { class: "plain", id: "prev", onclick: () => page(-1) }, "← Previous");
  const next = h("button", { class: "plain", id: "next", onclick: () => page(1) }, "Next →");
  const limit = () => Number(filters.limit || 48);

  let latest = 0;
  async function refresh() {
    setURL("browse", { run, ...filters });
    const query = new URLSearchParams({ run });
    for (const [key, value] of Object.entries(filters)) if (value !== "") query.set(key, value);
    const mine = ++latest;
    try {
      const result = await getJSON(`/api/samples?${query}`);
      if (mine !== latest) return;  // a newer filter's answer owns the grid
      const offset = Number(filters.offset || 0);
      summary.textContent = result.total
        ? `${offset + 1}–${offset + result.samples.length} of ${result.total}` : "no images match";
      prev.disabled = offset === 0;
      next.disabled = offset + result.samples.length >= result.total;
      grid.replaceChildren(...result.samples.map((row) => card(run, row)));
      say("");
    } catch (err) { say(err.message); }
  }
  function page(direction) {
    filters.offset = String(Math.max(0, Number(filters.offset || 0) + direction * limit()));
    refresh();
  }
  let timer = null;
  function set(key, value, now) {
    filters[key] = value;
    filters.offset = "";
    clearTimeout(timer);
    timer = setTimeout(refresh, now ? 0 : 250);
  }
  const input = (key, label, type, extra) => h("label", {}, label,
    h("input", { type, name: key, value: filters[key], oninput: (e) => set(key, e.target.value), ...extra }));
  const choice = (key, label, options) => h("label", {}, label,
    select(options, filters[key], { name: key, onchange: (e) => set(key, e.target.value, true) }));

  if (!filters.limit) filters.limit = "48";
  const controls = [
    choice("label", "class", [["", "all"], ...Object.keys(info.classes).map((c) => [c, c])]),
    input("q", "prompt contains", "text", { placeholder: "text", maxlength: 500 }),
    input("seed", "seed", "text", { inputmode: "numeric", pattern: "[0-9]*" }),
    input("attempt", "attempt", "number", { min: 1 }),
  ];
  if (info.rejected || info.curated) controls.push(choice("status", "renders", [["kept", "kept"], ["rejected", "rejected"], ["all", "kept + rejected"]]));
  if (info.real) controls.push(choice("source", "images", [["synthetic", "synthetic"], ["real", "real"], ["all", "synthetic + real"]]));
  if (info.curated) {
    for (const [column, low, high, min] of [["qc_label_score", "min_label_score", "max_label_score", 0],
      ["qc_real_similarity", "min_real_similarity", "max_real_similarity", -1]]) {
      controls.push(rangeFilter(column, info.scores[column], min, filters, low, high, set));
    }
    controls.push(choice("passed", "gate", [["", "any"], ["true", "passed"], ["false", "failed"]]));
    controls.push(h("label", {}, `memorisation flag (> ${info.memorisation_threshold})`,
      select([["", "any"], ["true", "flagged"], ["false", "not flagged"]], filters.flagged,
        { name: "flagged", onchange: (e) => set("flagged", e.target.value, true) })));
  }
  controls.push(choice("limit", "per page", [["24", "24"], ["48", "48"], ["96", "96"]]));
  view().replaceChildren(
    h("form", { class: "filters", id: "filters", onsubmit: (e) => e.preventDefault() }, controls),
    h("div", { class: "pager" }, prev, next, summary),
    grid,
  );
  await refresh();
}

function rangeFilter(column, title, min, filters, lowKey, highKey, set) {
  const low = filters[lowKey] || String(min), high = filters[highKey] || "1";
  const lowOut = h("output", {}, Number(low).toFixed(2)), highOut = h("output", {}, Number(high).toFixed(2));
  const slider = (key, value, out, fallback) => h("input", {
    type: "range", min, max: 1, step: 0.01, value, name: key, title,
    oninput: (e) => { out.textContent = Number(e.target.value).toFixed(2); set(key, e.target.value === String(fallback) ? "" : e.target.value); },
  });
  return h("label", { title }, column.replace("qc_", "").replace("_", " "),
    h("span", { class: "range" }, slider(lowKey, low, lowOut, min), lowOut, "to", slider(highKey, high, highOut, 1), highOut));
}

function card(run, row) {
  const real = row.source === "real";
  const href = real ? `#/real?run=${encodeURIComponent(run)}&id=${encodeURIComponent(row.sample_id)}`
    : `#/sample/${encodeURIComponent(run)}/${encodeURIComponent(row.sample_id)}` + (row.status === "rejected" ? `?attempt=${row.attempt}` : "");
  const badges = [h("span", { class: "badge" }, row.label)];
  if (real) badges.push(h("span", { class: "badge real" }, `real · ${row.split || "no split"}`));
  if (row.status === "rejected") badges.push(h("span", { class: "badge rejected" }, `rejected · attempt ${row.attempt}`));
  else if (!real && row.attempt > 1) badges.push(h("span", { class: "badge" }, `attempt ${row.attempt}`));
  if (row.qc_label_score !== undefined && row.qc_label_score !== null) badges.push(h("span", { class: "badge" }, `p ${fmt(row.qc_label_score)}`));
  if (row.qc_passed === false && row.status === "kept") badges.push(h("span", { class: "badge flag" }, "failed gate"));
  return h("a", { class: "card", href, "data-source": row.source, "data-id": row.sample_id },
    h("img", { src: real ? realURL(run, row.sample_id) : imageURL(run, row.sample_id, row.status === "rejected" ? row.attempt : null), alt: row.sample_id, loading: "lazy" }),
    h("div", { class: "id" }, row.sample_id), h("div", {}, badges));
}

// --- one image ------------------------------------------------------------------------------

async function sample(run, id, params) {
  const info = await getJSON(`/api/samples/${encodeURIComponent(run)}/${encodeURIComponent(id)}`);
  const row = info.sample;
  const attempt = params.get("attempt");
  const shown = attempt ? info.rejected.find((r) => String(r.attempt) === attempt) || row : row;
  const figures = [h("figure", {}, h("img", { id: "sample-image", src: imageURL(run, id, shown.status === "rejected" ? shown.attempt : null), alt: id }),
    h("figcaption", {}, `${shown.status === "rejected" ? "rejected render" : "synthetic"} · ${shown.label} · attempt ${shown.attempt}`))];
  const nearest = info.nearest_real_by_attempt[String(shown.attempt)];
  if (nearest) {
    figures.push(h("figure", {}, h("img", { id: "nearest-real", src: realURL(run, nearest.id), alt: nearest.id }),
      h("figcaption", {}, `nearest real train image: ${nearest.id} (${nearest.label}); similarity ${fmt(shown.qc_real_similarity)}`)));
  }
  const rerender = h("figure", { hidden: true, id: "rerender" });
  const snippet = h("pre", { class: "snippet", id: "snippet" }, info.snippet);
  const copy = h("button", { class: "plain", onclick: async () => {
    try { await navigator.clipboard.writeText(info.snippet); say("snippet copied", "info"); }
    catch (e) { getSelection().selectAllChildren(snippet); say("select-all done: copy with Ctrl-C", "info"); }
  } }, "Copy");
  const again = h("button", { id: "reproduce", onclick: async () => {
    again.disabled = true;
    try {
      const fresh = await generate({ class: shown.label, prompt: shown.prompt, negative_prompt: shown.negative_prompt, seed: shown.seed,
        steps: shown.steps, guidance_scale: shown.guidance_scale, lora_scale: shown.lora_scale, width: shown.width, height: shown.height,
        run, sample_id: shown.sample_id, attempt: shown.attempt });
      const stored = await pixels(document.getElementById("sample-image").src);
      const mine = await pixels(fresh.url);
      const diff = difference(stored, mine);
      rerender.replaceChildren(h("img", { src: fresh.url, alt: "re-rendered" }),
        h("figcaption", {}, `re-rendered by the studio in ${fresh.seconds} s; largest difference from the stored image: ${diff.max} of 255 (${diff.changed} pixels differ)`));
      rerender.hidden = false;
      say("");
    } catch (err) { say(err.message); }
    again.disabled = false;
  } }, "Re-render here");
  const attempts = info.rejected.map((r) => h("figure", { class: "small" },
    h("a", { href: `#/sample/${encodeURIComponent(run)}/${encodeURIComponent(id)}?attempt=${r.attempt}` },
      h("img", { src: imageURL(run, id, r.attempt), alt: `attempt ${r.attempt}` })),
    h("figcaption", {}, `attempt ${r.attempt}: ${r.qc_reason || "rejected"}`)));
  view().replaceChildren(
    h("p", {}, h("a", { href: `#/browse?run=${encodeURIComponent(run)}` }, "← back to the grid")),
    h("div", { class: "detail" }, figures, rerender),
    h("h2", {}, "Provenance"), propsTable(shown),
    h("h2", {}, `Rejected attempts (${info.rejected.length})`),
    attempts.length ? h("div", { class: "strip", id: "attempts" }, attempts) : h("p", { class: "muted" }, "none: the first render was kept"),
    h("h2", {}, "Reproduce with plain diffusers"),
    h("p", { class: "muted" }, "Within one 8-bit level of the stored image (synth's fast path and batching change float rounding). ", copy, " ", again),
    snippet,
  );
}

async function realImage(params) {
  const run = params.get("run") || state.run, id = params.get("id") || "";
  view().replaceChildren(
    h("p", {}, h("a", { href: `#/browse?run=${encodeURIComponent(run)}&source=real` }, "← back to the real images")),
    h("figure", {}, h("img", { src: realURL(run, id), alt: id }), h("figcaption", {}, `real image ${id}`)));
}

// --- generation -----------------------------------------------------------------------------

async function generate(body, onQueue) {
  const job = (crypto.randomUUID ? crypto.randomUUID() : String(Math.random())).replace(/[^a-zA-Z0-9]/g, "");
  const clean = Object.fromEntries(Object.entries(body).filter(([, v]) => v !== "" && v !== null && v !== undefined));
  let done = false;
  const poll = async () => {
    while (!done) {
      try {
        const q = await getJSON(`/api/queue?job=${job}`);
        if (!done && onQueue) onQueue(q);
      } catch (e) { /* the render's own answer reports errors */ }
      await new Promise((r) => setTimeout(r, 400));
    }
  };
  poll();
  try {
    const response = await api("/api/generate", { method: "POST", headers: { "Content-Type": "application/json", "X-Synth-Job": job }, body: JSON.stringify(clean) });
    const blob = await response.blob();
    const name = (response.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
    return { url: URL.createObjectURL(blob), blob, seconds: response.headers.get("X-Synth-Seconds"),
      seed: response.headers.get("X-Synth-Seed"), name: name ? name[1] : "studio.png", text: pngText(await blob.arrayBuffer()) };
  } finally { done = true; }
}

function queueNote(q) {
  if (q.position === null) return "";
  if (q.position === 0) return Object.keys(q.loaded).length ? "rendering…" : "loading the model, then rendering…";
  return `waiting: position ${q.position} in the queue`;
}

// The provenance travels in the PNG's text chunks (tEXt, and uncompressed iTXt).
function pngText(buffer) {
  const bytes = new Uint8Array(buffer), text = {}, view = new DataView(buffer);
  const latin = new TextDecoder("latin1"), utf8 = new TextDecoder("utf-8");
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at), type = latin.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    const nul = data.indexOf(0);
    if (type === "tEXt" && nul > 0) text[latin.decode(data.subarray(0, nul))] = latin.decode(data.subarray(nul + 1));
    if (type === "iTXt" && nul > 0 && data[nul + 1] === 0) {
      let rest = data.subarray(nul + 3);
      rest = rest.subarray(rest.indexOf(0) + 1);
      rest = rest.subarray(rest.indexOf(0) + 1);
      text[latin.decode(data.subarray(0, nul))] = utf8.decode(rest);
    }
    if (type === "IEND") break;
    at += 12 + length;
  }
  return text;
}

async function pixels(url) {
  const image = new Image();
  image.src = url;
  await image.decode();
  const canvas = h("canvas", { width: image.naturalWidth, height: image.naturalHeight });
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0);
  return context.getImageData(0, 0, canvas.width, canvas.height);
}

// |A-B| per pixel (largest channel), and where it is largest.
function difference(a, b) {
  const size = Math.min(a.data.length, b.data.length), values = new Float32Array(size / 4);
  let max = 0, changed = 0, sum = 0;
  for (let i = 0, p = 0; i < size; i += 4, p++) {
    const d = Math.max(Math.abs(a.data[i] - b.data[i]), Math.abs(a.data[i + 1] - b.data[i + 1]), Math.abs(a.data[i + 2] - b.data[i + 2]));
    values[p] = d; sum += d; if (d > 0) changed++; if (d > max) max = d;
  }
  return { values, max, changed, mean: sum / values.length, width: a.width, height: a.height };
}

// A perceptual colour scale (viridis, sampled at five stops).
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1), i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}

function heatmap(diff) {
  const canvas = h("canvas", { width: diff.width, height: diff.height, id: "diff-map" });
  const context = canvas.getContext("2d");
  const image = context.createImageData(diff.width, diff.height);
  const top = Math.max(diff.max, 1);
  diff.values.forEach((v, p) => { const [r, g, b] = colour(v / top); image.data.set([r, g, b, 255], p * 4); });
  context.putImageData(image, 0, 0);
  const bar = h("canvas", { width: 100, height: 1 });
  const barContext = bar.getContext("2d"), barImage = barContext.createImageData(100, 1);
  for (let x = 0; x < 100; x++) barImage.data.set([...colour(x / 99), 255], x * 4);
  barContext.putImageData(barImage, 0, 0);
  return h("figure", {}, canvas, h("figcaption", {}, `|A − B|: largest ${diff.max} of 255, mean ${diff.mean.toFixed(2)}`),
    h("div", { class: "scale" }, "0", bar, String(top)));
}

function classOptions(info) {
  return Object.entries(info.classes).map(([c, v]) => [c, v.lora ? `${c} (LoRA ${v.lora.split("/").slice(-2).join("/")})` : `${c} (base model)`]);
}

function promptPicker(info, label, value, name) {
  const area = h("textarea", { name, maxlength: 4000 }, value || (info.classes[label].prompts[0] || ""));
  const templates = select([["", "template…"], ...info.classes[label].prompts.map((p, i) => [String(i), p.length > 80 ? p.slice(0, 77) + "…" : p])], "",
    { onchange: (e) => { if (e.target.value !== "") area.value = info.classes[label].prompts[Number(e.target.value)]; } });
  return { area, templates };
}

async function compare(params) {
  const run = params.get("run") || state.run;
  const info = await details(run);
  const mode = params.get("mode") || "pair";
  const labels = Object.keys(info.classes);
  const withLora = labels.filter((c) => info.classes[c].lora);
  const plain = labels.filter((c) => !info.classes[c].lora);
  const seed = h("input", { type: "text", name: "seed", value: params.get("seed") || "42", inputmode: "numeric" });
  const out = h("div", { class: "strip", id: "compare-out" });
  const note = h("span", { class: "muted", id: "queue-note" });
  const tab = (name, title) => h("button", { class: mode === name ? "" : "plain", onclick: () => { location.hash = `#/compare?run=${encodeURIComponent(run)}&mode=${name}`; } }, title);
  let form;
  if (mode === "pair") {
    const aClass = params.get("a_class") || plain[0] || labels[0], bClass = params.get("b_class") || withLora[0] || labels[labels.length - 1];
    const side = (key, label, text) => {
      const picker = promptPicker(info, label, text, `${key}_prompt`);
      const chooser = select(classOptions(info), label, { name: `${key}_class`, onchange: () => { params.set(`${key}_class`, chooser.value); params.delete(`${key}_prompt`); setURL("compare", Object.fromEntries(params)); compare(params); } });
      return { chooser, picker };
    };
    const a = side("a", aClass, params.get("a_prompt")), b = side("b", bClass, params.get("b_prompt"));
    const go = h("button", { id: "render-pair", onclick: async () => {
      go.disabled = true; out.replaceChildren();
      setURL("compare", { run, mode, seed: seed.value, a_class: a.chooser.value, b_class: b.chooser.value, a_prompt: a.picker.area.value, b_prompt: b.picker.area.value });
      try {
        const first = await generate({ run, class: a.chooser.value, prompt: a.picker.area.value, seed: seed.value }, (q) => { note.textContent = queueNote(q); });
        const second = await generate({ run, class: b.chooser.value, prompt: b.picker.area.value, seed: seed.value }, (q) => { note.textContent = queueNote(q); });
        const diff = difference(await pixels(first.url), await pixels(second.url));
        out.replaceChildren(
          h("figure", {}, h("img", { src: first.url, alt: "A" }), h("figcaption", {}, `A: ${a.chooser.value} · seed ${seed.value}`)),
          h("figure", {}, h("img", { src: second.url, alt: "B" }), h("figcaption", {}, `B: ${b.chooser.value} · seed ${seed.value}`)),
          heatmap(diff));
        say("");
      } catch (err) { say(err.message); }
      note.textContent = ""; go.disabled = false;
    } }, "Render the pair");
    form = h("div", { class: "form" },
      h("label", {}, "seed (both)", seed),
      h("label", {}, "A: class", a.chooser), h("label", { class: "wide" }, "A: prompt", a.picker.templates, a.picker.area),
      h("label", {}, "B: class", b.chooser), h("label", { class: "wide" }, "B: prompt", b.picker.templates, b.picker.area),
      h("div", {}, go, " ", note));
  } else {
    const label = params.get("class") || withLora[0];
    if (!label) { view().replaceChildren(h("div", { class: "tabs" }, tab("pair", "Counterfactual pair"), tab("strip", "LoRA strength strip")), h("p", {}, "No class of this run has a LoRA.")); return; }
    const chooser = select(withLora.map((c) => [c, c]), label, { name: "class", onchange: () => { params.set("class", chooser.value); params.delete("prompt"); setURL("compare", Object.fromEntries(params)); compare(params); } });
    const picker = promptPicker(info, label, params.get("prompt"), "prompt");
    const go = h("button", { id: "render-strip", onclick: async () => {
      go.disabled = true; out.replaceChildren();
      setURL("compare", { run, mode, seed: seed.value, class: chooser.value, prompt: picker.area.value });
      try {
        for (const scale of [0, 0.25, 0.5, 0.75, 1.0]) {
          const image = await generate({ run, class: chooser.value, prompt: picker.area.value, seed: seed.value, lora_scale: scale }, (q) => { note.textContent = queueNote(q); });
          out.append(h("figure", { class: "small" }, h("img", { src: image.url, alt: `scale ${scale}` }), h("figcaption", {}, `LoRA scale ${scale}`)));
        }
        say("");
      } catch (err) { say(err.message); }
      note.textContent = ""; go.disabled = false;
    } }, "Render the strip");
    form = h("div", { class: "form" }, h("label", {}, "class", chooser), h("label", {}, "seed", seed),
      h("label", { class: "wide" }, "prompt", picker.templates, picker.area), h("div", {}, go, " ", note));
  }
  view().replaceChildren(h("div", { class: "tabs" }, tab("pair", "Counterfactual pair"), tab("strip", "LoRA strength strip")), form, h("h2", {}, "Result"), out);
}

async function generatePage(params) {
  const run = params.get("run") || state.run;
  const info = await details(run);
  const g = info.generator;
  const label = params.get("class") || Object.keys(info.classes)[0];
  const cls = info.classes[label];
  const picker = promptPicker(info, label, params.get("prompt"), "prompt");
  const negative = h("textarea", { name: "negative_prompt", maxlength: 4000 }, params.get("negative_prompt") ?? cls.negative_prompt);
  const number = (name, value, min, max, step) => {
    const field = h("input", { type: "number", name, value, min, max, step });
    const slider = h("input", { type: "range", min, max, step, value, oninput: () => { field.value = slider.value; } });
    field.addEventListener("input", () => { slider.value = field.value; });
    return { field, row: h("span", { class: "range" }, slider, field) };
  };
  const lora = number("lora_scale", params.get("lora_scale") || cls.lora_scale || 0, 0, 2, 0.05);
  if (!cls.lora) lora.row.querySelectorAll("input").forEach((i) => { i.disabled = true; });
  const steps = number("steps", params.get("steps") || g.steps, 1, 100, 1);
  const guidance = number("guidance_scale", params.get("guidance_scale") || g.guidance_scale, 0, 20, 0.5);
  const seed = h("input", { type: "text", name: "seed", value: params.get("seed") || "", placeholder: "blank: random", inputmode: "numeric" });
  const width = h("input", { type: "number", name: "width", value: params.get("width") || g.width, min: 8, max: g.native_size, step: 8 });
  const height = h("input", { type: "number", name: "height", value: params.get("height") || g.height, min: 8, max: g.native_size, step: 8 });
  const chooser = select(classOptions(info), label, { name: "class", onchange: () => { generatePage(new URLSearchParams({ run, class: chooser.value })); } });
  const note = h("span", { class: "muted", id: "queue-note" });
  const out = h("div", { class: "detail", id: "generate-out" });
  const go = h("button", { id: "generate", onclick: async () => {
    go.disabled = true;
    const body = { run, class: chooser.value, prompt: picker.area.value, negative_prompt: negative.value, seed: seed.value.trim(),
      steps: steps.field.value, guidance_scale: guidance.field.value, width: width.value, height: height.value,
      lora_scale: cls.lora ? lora.field.value : "" };
    setURL("generate", body);
    try {
      const image = await generate(body, (q) => { note.textContent = queueNote(q); });
      out.replaceChildren(h("figure", {}, h("img", { src: image.url, alt: "generated", id: "generated" }),
        h("figcaption", {}, `seed ${image.seed} · ${image.seconds} s · `, h("a", { href: image.url, download: image.name, id: "download" }, "download PNG (provenance inside)"))),
        h("div", {}, h("h2", {}, "Provenance in the PNG"), propsTable(image.text)));
      say("");
    } catch (err) { say(err.message); }
    note.textContent = ""; go.disabled = false;
  } }, "Generate");
  view().replaceChildren(h("div", { class: "form", id: "generate-form" },
    h("label", {}, "class / adapter", chooser),
    h("label", {}, "seed", seed),
    h("label", {}, "LoRA strength", lora.row),
    h("label", {}, "steps", steps.row),
    h("label", {}, "guidance", guidance.row),
    h("label", {}, `width (≤ ${g.native_size})`, width),
    h("label", {}, `height (≤ ${g.native_size})`, height),
    h("label", { class: "wide" }, "prompt", picker.templates, picker.area),
    h("label", { class: "wide" }, "negative prompt", negative),
    h("div", {}, go, " ", note)), out);
}

async function report(params) {
  const run = params.get("run") || state.run;
  const info = await details(run);
  view().replaceChildren(info.report
    ? h("iframe", { class: "report", src: `/runs/${encodeURIComponent(run)}/report`, title: `report of ${run}`, sandbox: "" })
    : h("p", {}, `Run ${run} has no eval/report.html yet: run synth eval on it.`));
}

// --- routing --------------------------------------------------------------------------------

async function render() {
  let parts, params;
  try { ({ parts, params } = route()); } catch (err) { say(`this link is malformed: ${err.message}`); return; }
  const name = parts[0];
  if (name === "sample" && parts[1]) state.run = parts[1];
  else if (params.get("run") && state.runs.some((r) => r.name === params.get("run"))) state.run = params.get("run");
  document.getElementById("run").value = state.run;
  document.querySelectorAll("nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.view === (name === "sample" || name === "real" ? "browse" : name));
    a.href = `#/${a.dataset.view}?run=${encodeURIComponent(state.run)}`;
  });
  say("");
  try {
    if (name === "sample") await sample(parts[1], parts.slice(2).join("/"), params);
    else if (name === "real") await realImage(params);
    else if (name === "compare") await compare(params);
    else if (name === "generate") await generatePage(params);
    else if (name === "report") await report(params);
    else await browse(params);
  } catch (err) { say(err.message); }
}

async function start() {
  try {
    state.runs = await getJSON("/api/runs");
  } catch (err) { say(err.message); return; }
  state.run = state.runs[0].name;
  const picker = document.getElementById("run");
  picker.replaceChildren(...state.runs.map((r) => h("option", { value: r.name }, `${r.name} (${r.rows} images)`)));
  picker.addEventListener("change", () => { location.hash = `#/browse?run=${encodeURIComponent(picker.value)}`; });
  window.addEventListener("hashchange", render);
  await render();
}

document.addEventListener("DOMContentLoaded", start);
