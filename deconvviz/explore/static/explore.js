// deconvviz explore: the page. Plain JavaScript, no build step; every request goes to this server only.
"use strict";

(function () {
  const config = JSON.parse(document.body.dataset.config);
  const $ = (id) => document.getElementById(id);
  const client = Math.random().toString(36).slice(2, 12); // this page, for the server's stale-request dropping
  let seq = 0; // the view's number: a newer view makes this page's older queued requests stale
  let token = null;
  const framed = window.top !== window.self;

  // The token arrives in the address once; the server keeps it in a cookie. Drop it from the address (and
  // from the history) so that permalinks never carry it; in a frame, where the cookie may not be sent, keep it.
  (function takeToken() {
    const params = new URLSearchParams(location.search);
    if (params.has("token")) {
      token = params.get("token");
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
    }
  })();

  // steps: the way-down panel's step (null: the panel is closed)
  const state = { image: null, layer: null, channel: null, unit: null, method: "deconvnet", scale: "robust", steps: null };
  let stepsShown = null; // { key, body } of the steps listed in the panel
  let layers = [];
  let layerInfo = {};
  let activations = null;
  let total = 0;
  let stripOffset = 0;
  let gridShown = 0;
  let topkTimer = null;
  const GRID_PAGE = 64;

  function api(path, params, stale) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined) query.set(k, v);
    if (stale !== false) { query.set("client", client); query.set("seq", String(seq)); }
    if (token && framed) query.set("token", token);
    const text = query.toString();
    return path + (text ? "?" + text : "");
  }

  async function getJSON(url, options) {
    const headers = token ? { Authorization: "token " + token } : {};
    const response = await fetch(url, { headers, ...(options || {}) });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const error = new Error((body && body.error) || response.status + " " + response.statusText);
      error.status = response.status;
      throw error;
    }
    return { body, response };
  }

  function number(value) {
    // Activations: whole numbers from 100 up, three significant digits below.
    const size = Math.abs(value);
    if (size >= 100) return String(Math.round(value));
    if (size >= 1) return value.toPrecision(3);
    return size === 0 ? "0" : value.toPrecision(2);
  }

  function showError(message) {
    const el = $("error");
    el.textContent = message || "";
    el.hidden = !message;
  }

  function fail(error) {
    if (error && (error.status === 429 || error.name === "AbortError")) return; // a newer click took over
    showError(error && error.message ? error.message : String(error));
  }

  // ------------------------------------------------------------------------------------------- address

  function readAddress() {
    const p = new URLSearchParams(location.search);
    state.image = p.get("image");
    state.layer = p.get("layer");
    state.channel = p.has("channel") ? parseInt(p.get("channel"), 10) : null;
    const unit = p.get("unit");
    state.unit = unit && /^\d+,\d+$/.test(unit) ? unit.split(",").map(Number) : null;
    state.method = config.methods.includes(p.get("method")) ? p.get("method") : "deconvnet";
    state.scale = config.scales.includes(p.get("scale")) ? p.get("scale") : "robust";
    state.steps = /^\d+$/.test(p.get("steps") || "") ? parseInt(p.get("steps"), 10) : null;
  }

  function address() {
    const p = new URLSearchParams();
    if (state.image) p.set("image", state.image);
    if (state.layer) p.set("layer", state.layer);
    if (state.channel !== null) p.set("channel", String(state.channel));
    if (state.unit) p.set("unit", state.unit.join(","));
    p.set("method", state.method);
    p.set("scale", state.scale);
    if (state.steps !== null) p.set("steps", String(state.steps));
    return "?" + p.toString();
  }

  function remember(replace) {
    const target = address();
    if (target === location.search) return;
    if (replace) history.replaceState(null, "", target);
    else history.pushState(null, "", target);
  }

  // -------------------------------------------------------------------------------------------- pictures

  // A link that makes `change` to the page's state when clicked, without a reload; its address can still be
  // opened in a new tab or shared.
  function chooser(href, change) {
    const a = document.createElement("a");
    a.href = href;
    a.addEventListener("click", (event) => {
      event.preventDefault();
      choose(change);
    });
    return a;
  }

  function thumbnail(src, alt) {
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = alt;
    img.src = src;
    return img;
  }

  async function loadStrip() {
    const { body, response } = await getJSON(api("/api/images", { offset: stripOffset, limit: config.pageSize }, false));
    total = parseInt(response.headers.get("x-total-count") || String(body.length), 10);
    const strip = $("strip");
    strip.replaceChildren();
    for (const entry of body) {
      const a = chooser("?image=" + encodeURIComponent(entry.id), { image: entry.id, channel: null, unit: null });
      a.dataset.id = entry.id;
      a.title = entry.name + " (" + entry.width + "x" + entry.height + ")";
      a.appendChild(thumbnail(api("/api/image.png", { image: entry.id, size: 96 }, false), entry.name));
      strip.appendChild(a);
    }
    const last = Math.min(total, stripOffset + body.length);
    $("strip-count").textContent = total ? (stripOffset + 1) + "-" + last + " of " + total : "no pictures yet: add one";
    $("prev").disabled = stripOffset === 0;
    $("next").disabled = last >= total;
    markStrip();
    return body;
  }

  function markStrip() {
    for (const a of $("strip").children) a.classList.toggle("current", a.dataset.id === state.image);
  }

  async function upload(file) {
    if (!file) return;
    if (file.size > config.uploadLimit) {
      showError("the upload is over the limit of " + (config.uploadLimit / 1e6).toFixed(1) + " MB; send a smaller picture");
      return;
    }
    const form = new FormData();
    form.append("file", file);
    try {
      const { body } = await getJSON(api("/api/images", {}, false), { method: "POST", body: form });
      showError("");
      stripOffset = Math.max(0, Math.floor((total) / config.pageSize) * config.pageSize);
      await loadStrip();
      choose({ image: body.id, channel: null, unit: null });
    } catch (error) { fail(error); }
  }

  // ---------------------------------------------------------------------------------------------- layers

  function describeLayer(layer) {
    const field = layer.receptive_field;
    const rf = !field ? "field ?" : field.whole_image ? "whole image" : "field " + field.size.join("x") + " /" + field.stride[0];
    return layer.shape.join("x") + " · " + rf;
  }

  function drawLayers() {
    const nav = $("layers");
    nav.replaceChildren();
    for (const layer of layers) {
      const a = chooser("?layer=" + encodeURIComponent(layer.name), { layer: layer.name, channel: null, unit: null });
      a.dataset.name = layer.name;
      const title = document.createElement("div");
      title.textContent = layer.name;
      a.appendChild(title);
      if (layer.name !== layer.node) {
        const node = document.createElement("div");
        node.className = "node";
        node.textContent = layer.node;
        a.appendChild(node);
      }
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = describeLayer(layer);
      a.appendChild(meta);
      nav.appendChild(a);
    }
  }

  function markLayers() {
    for (const a of $("layers").children) {
      const on = a.dataset.name === state.layer;
      a.classList.toggle("current", on);
      if (on) a.scrollIntoView({ block: "nearest" });
    }
  }

  function defaultLayer() {
    const spatial = layers.filter((l) => l.shape.length === 3);
    const named = spatial.filter((l) => l.name !== l.node && !/pool/i.test(l.name));
    const pick = named.length ? named[named.length - 1] : spatial.length ? spatial[spatial.length - 1] : layers[layers.length - 1];
    return pick ? pick.name : null;
  }

  // ------------------------------------------------------------------------------------------------ view

  let shownKey = null; // picture and layer of the grid on screen

  async function render() {
    markStrip();
    markLayers();
    $("method").value = state.method;
    $("scale").value = state.scale;
    if (!state.image || !state.layer) {
      showError(state.image ? "" : total ? "" : "no pictures: add one with the button above, or start with a folder");
      return;
    }
    seq += 1;
    const mine = seq;
    const key = state.image + "\u0000" + state.layer;
    $("picture").src = api("/api/image.png", { image: state.image }, false);
    try {
      if (key !== shownKey || !activations) {
        activations = null;
        const { body } = await getJSON(api("/api/activations", { image: state.image, layer: state.layer, method: state.method }));
        if (mine !== seq) return;
        activations = body;
        shownKey = key;
        drawGrid(true);
      }
      if (state.channel === null || state.channel >= activations.shape[0]) {
        state.channel = activations.channels.length ? activations.channels[0].channel : 0;
        state.unit = null;
        remember(true);
      }
      markGrid();
      await showUnit(mine);
    } catch (error) {
      if (mine === seq) fail(error);
    }
  }

  async function showUnit(mine) {
    const params = { image: state.image, layer: state.layer, channel: state.channel, method: state.method };
    if (state.unit) params.position = state.unit.join(",");
    const { body } = await getJSON(api("/api/unit", params));
    if (mine !== seq) return;
    showError("");
    $("map").src = api("/api/activations.png", { image: state.image, layer: state.layer, channel: state.channel }, false);
    $("projection").src = api("/api/projection.png", { ...params, scale: state.scale });
    const size = body.size || [224, 224];
    drawBox($("box"), body.box, size);
    drawPatch(body.box, size);
    drawMarker(body.position);
    const where = body.position ? " unit (" + body.position.join(", ") + ")" : "";
    const box = body.box ? "  field rows " + body.box[0] + "-" + body.box[2] + ", cols " + body.box[1] + "-" + body.box[3] : "";
    $("unit").textContent = state.layer + " ch " + body.channel + where + "  a=" + number(body.activation) + box + "  (" + state.method + ", " + state.scale + ")";
    $("projection-caption").textContent = state.method + " projection";
    loadTopk();
    await showSteps(mine);
  }

  // ------------------------------------------------------------------------------------------ the way down

  function unitParams() {
    const params = { image: state.image, layer: state.layer, channel: state.channel, method: state.method };
    if (state.unit) params.position = state.unit.join(",");
    return params;
  }

  async function showSteps(mine) {
    const panel = $("steps-panel");
    const open = state.steps !== null;
    panel.hidden = !open;
    $("way-down").setAttribute("aria-expanded", String(open));
    $("way-down").textContent = open ? "hide the way down" : "show the way down";
    if (!open || !state.image || !state.layer || state.channel === null) return;
    const params = unitParams();
    const key = JSON.stringify(params);
    if (!stepsShown || stepsShown.key !== key) {
      const { body } = await getJSON(api("/api/steps", params));
      if (mine !== seq) return;
      stepsShown = { key, body };
    }
    const steps = stepsShown.body.steps;
    if (state.steps >= steps.length) {
      state.steps = steps.length - 1;
      remember(true);
    }
    const step = steps[state.steps];
    $("step-count").textContent = "(step " + step.index + " of " + (steps.length - 1) + ": seed first, pixels last)";
    $("step-prev").disabled = state.steps === 0;
    $("step-next").disabled = state.steps === steps.length - 1;
    const undid = step.ops.length ? " undoing " + step.ops.join(" + ") : "";
    $("step-label").textContent = step.kind + undid + "  at " + step.name + (step.name !== step.node ? " (" + step.node + ")" : "") + "  " + step.shape.join("x");
    const last = state.steps === steps.length - 1 && step.shape.length === 3 && (step.shape[0] === 3 || step.shape[0] === 1);
    $("step-caption").textContent = last
      ? "the reconstruction, as the projection shows it (" + state.scale + ")"
      : "summed over channels: white 0, red above, blue below" + (step.switches ? "; unpooled values sit on the switches, zero elsewhere" : "");
    const url = api("/api/steps.png", { ...params, scale: state.scale, step: state.steps }, false);
    $("step-picture").src = url;
    // The unit reaches a part of the map only: that part, enlarged (nearest neighbour), beside the whole map.
    const sides = step.shape.length === 3 ? step.shape.slice(1) : step.shape.length === 2 ? step.shape : [1, step.shape.reduce((a, b) => a * b, 1)];
    const size = sides.map((n) => n * step.enlarged);
    const box = step.box ? step.box.map((v) => v * step.enlarged) : null;
    drawBox($("step-box"), box, size);
    $("step-zoom-figure").hidden = !box;
    if (box) crop($("step-zoom"), url, box, size, 336);
  }

  function page(delta) {
    if (state.steps === null || !stepsShown) return;
    const next = Math.max(0, Math.min(stepsShown.body.steps.length - 1, state.steps + delta));
    if (next === state.steps) return;
    state.steps = next;
    remember(false);
    showSteps(seq).catch(fail);
  }

  function drawBox(el, box, size) {
    if (!box) { el.hidden = true; return; }
    el.hidden = false;
    el.style.top = (100 * box[0] / size[0]) + "%";
    el.style.left = (100 * box[1] / size[1]) + "%";
    el.style.height = (100 * (box[2] - box[0]) / size[0]) + "%";
    el.style.width = (100 * (box[3] - box[1]) / size[1]) + "%";
  }

  function crop(el, url, box, size, side) {
    // Show url's region box (top, left, bottom, right of a size[0] x size[1] picture) in a side x side square.
    const [top, left, bottom, right] = box || [0, 0, size[0], size[1]];
    const scale = side / Math.max(bottom - top, right - left, 1);
    el.style.backgroundImage = "url(\"" + url + "\")";
    el.style.backgroundSize = (size[1] * scale) + "px " + (size[0] * scale) + "px";
    el.style.backgroundPosition = (-left * scale) + "px " + (-top * scale) + "px";
    el.style.width = ((right - left) * scale) + "px";
    el.style.height = ((bottom - top) * scale) + "px";
  }

  function drawPatch(box, size) {
    crop($("patch"), api("/api/image.png", { image: state.image }, false), box, size, 224);
  }

  function drawMarker(position) {
    const marker = $("marker");
    if (!position || !activations || activations.shape.length !== 3) { marker.hidden = true; return; }
    const [, h, w] = activations.shape;
    marker.hidden = false;
    marker.style.top = (100 * position[0] / h) + "%";
    marker.style.left = (100 * position[1] / w) + "%";
    marker.style.height = (100 / h) + "%";
    marker.style.width = (100 / w) + "%";
  }

  function drawGrid(fresh) {
    const grid = $("grid");
    if (fresh) { grid.replaceChildren(); gridShown = 0; }
    const channels = activations.channels;
    const until = Math.min(channels.length, gridShown + GRID_PAGE);
    for (let i = gridShown; i < until; i++) {
      const item = channels[i];
      const a = chooser("?channel=" + item.channel, { channel: item.channel, unit: null });
      a.dataset.channel = String(item.channel);
      a.title = "channel " + item.channel + ", peak " + number(item.peak) + (item.position ? " at (" + item.position.join(", ") + ")" : "");
      const img = thumbnail(api("/api/activations.png", { image: state.image, layer: state.layer, channel: item.channel }, false), "channel " + item.channel);
      const label = document.createElement("div");
      label.textContent = item.channel + " · " + number(item.peak);
      a.append(img, label);
      grid.appendChild(a);
    }
    gridShown = until;
    $("more").hidden = gridShown >= channels.length;
    $("grid-count").textContent = "(" + gridShown + " of " + channels.length + ")";
    markGrid();
  }

  function markGrid() {
    for (const a of $("grid").children) a.classList.toggle("current", a.dataset.channel === String(state.channel));
  }

  // ----------------------------------------------------------------------------------------------- top-k

  async function loadTopk() {
    clearTimeout(topkTimer);
    const mine = seq;
    const want = { layer: state.layer, channel: state.channel, method: state.method };
    let body;
    try {
      ({ body } = await getJSON(api("/api/topk", want, false)));
    } catch (error) {
      $("topk-status").textContent = error.message;
      return;
    }
    if (mine !== seq) return;
    const panel = $("topk");
    const status = $("topk-status");
    if (body.state === "scanning") {
      status.textContent = "scanning the folder: " + body.done + " of " + body.total + " pictures";
      topkTimer = setTimeout(loadTopk, 1500);
    } else {
      status.textContent = body.message || (body.source === "report" ? "(from the report)" : "");
    }
    panel.replaceChildren();
    for (const hit of body.hits) {
      const a = document.createElement("a");
      const target = { image: hit.image, layer: state.layer, channel: state.channel, unit: hit.position };
      const pair = document.createElement("div");
      pair.className = "pair";
      const rec = document.createElement("div");
      const patch = document.createElement("div");
      rec.className = patch.className = "crop";
      pair.append(rec, patch);
      const label = document.createElement("div");
      label.textContent = "a=" + number(hit.value) + " " + hit.name;
      a.append(pair, label);
      a.title = hit.name + ", unit (" + hit.position.join(", ") + ")";
      if (hit.image) {
        const size = layerSize();
        const params = { image: hit.image, layer: state.layer, channel: state.channel, position: hit.position.join(","), method: state.method, scale: state.scale };
        crop(rec, api("/api/projection.png", params), hit.box, size, 80);
        crop(patch, api("/api/image.png", { image: hit.image }, false), hit.box, size, 80);
        const saved = { ...state };
        Object.assign(saved, target);
        a.href = hrefOf(saved);
        a.addEventListener("click", (event) => {
          event.preventDefault();
          choose(target);
        });
      }
      panel.appendChild(a);
    }
  }

  function layerSize() {
    return activations && activations.size ? activations.size : [224, 224];
  }

  function hrefOf(view) {
    const keep = { ...state };
    Object.assign(state, view);
    const target = address();
    Object.assign(state, keep);
    return target;
  }

  // ----------------------------------------------------------------------------------------------- events

  function choose(change) {
    Object.assign(state, change);
    remember(false);
    render();
  }

  $("map").addEventListener("click", (event) => {
    if (!activations || activations.shape.length !== 3) return;
    const rect = event.target.getBoundingClientRect();
    const [, h, w] = activations.shape;
    const row = Math.min(h - 1, Math.max(0, Math.floor((event.clientY - rect.top) / rect.height * h)));
    const col = Math.min(w - 1, Math.max(0, Math.floor((event.clientX - rect.left) / rect.width * w)));
    choose({ unit: [row, col] });
  });
  $("more").addEventListener("click", () => drawGrid(false));
  $("way-down").addEventListener("click", () => {
    state.steps = state.steps === null ? 0 : null;
    remember(false);
    showSteps(seq).catch(fail);
  });
  $("step-prev").addEventListener("click", () => page(-1));
  $("step-next").addEventListener("click", () => page(1));
  document.addEventListener("keydown", (event) => {
    if (state.steps === null || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.target.closest && event.target.closest("input, select, textarea")) return;
    if (event.key === "ArrowLeft") { event.preventDefault(); page(-1); }
    if (event.key === "ArrowRight") { event.preventDefault(); page(1); }
  });
  $("prev").addEventListener("click", () => { stripOffset = Math.max(0, stripOffset - config.pageSize); loadStrip().catch(fail); });
  $("next").addEventListener("click", () => { stripOffset += config.pageSize; loadStrip().catch(fail); });
  $("method").addEventListener("change", (event) => choose({ method: event.target.value }));
  $("scale").addEventListener("change", (event) => choose({ scale: event.target.value }));
  $("file").addEventListener("change", (event) => upload(event.target.files[0]));
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) upload(event.dataTransfer.files[0]);
  });
  window.addEventListener("popstate", () => {
    const before = state.image + "\u0000" + state.layer;
    readAddress();
    if (before !== state.image + "\u0000" + state.layer) shownKey = null;
    render();
  });

  async function start() {
    for (const [id, values] of [["method", config.methods], ["scale", config.scales]]) {
      for (const value of values) {
        const option = document.createElement("option");
        option.value = option.textContent = value;
        $(id).appendChild(option);
      }
    }
    readAddress();
    try {
      layers = (await getJSON(api("/api/layers", {}, false))).body;
      layerInfo = Object.fromEntries(layers.map((l) => [l.name, l]));
      drawLayers();
      if (state.layer && !layerInfo[state.layer] && !layers.some((l) => l.node === state.layer)) state.layer = null;
      if (!state.layer) state.layer = defaultLayer();
      const first = await loadStrip();
      if (!state.image && first.length) state.image = first[0].id;
      remember(true);
      await render();
      $("status").textContent = config.folder ? "folder: " + config.folder : "";
    } catch (error) { fail(error); }
  }

  start();
})();
