// deconvviz explore: the page. Plain JavaScript, no build step; every request goes to this server only.
"use strict";

(function () {
  const config = JSON.parse(document.body.dataset.config);
  const $ = (id) => document.getElementById(id);
  const { number, mebibytes, thumbnail, describeLayer, drawBox, crop, oneColour } = window.deconvvizDraw;
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
  let topkKey = null; // the unit whose top-9 hits the panel shows
  let occlusionKey = null; // the picture, layer and channel the occlusion panel shows (null: closed)
  let shownActivation = null; // the activation of the unit whose projection is on screen
  let lastUnit = null; // its position on the map (the arrow keys move from there)
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

  function showError(message) {
    const el = $("error");
    el.textContent = message || "";
    el.hidden = !message;
  }

  function superseded(error) {
    return error && (error.status === 429 || error.name === "AbortError"); // a newer click took over
  }

  function fail(error) {
    if (superseded(error)) return;
    showError(error && error.message ? error.message : String(error));
  }

  // What the page left out of the address it was opened with (a value it cannot use), one line, until the next click.
  let notices = [];

  function notice(text) {
    if (text) notices.push(text);
    else notices = [];
    const el = $("notice");
    el.textContent = notices.length ? "from the address: " + notices.join("; ") : "";
    el.hidden = !notices.length;
  }

  // ------------------------------------------------------------------------------------------- address

  function readAddress() {
    // A value the page cannot use counts as absent (the default is shown) and the notice says so.
    const p = new URLSearchParams(location.search);
    notice("");
    const given = (name, fits, instead) => {
      const text = p.get(name);
      if (text === null || text === "") return null;
      if (fits(text)) return text;
      notice(name + "=" + text + " is not " + instead);
      return null;
    };
    const whole = (text) => /^\d{1,9}$/.test(text); // longer: out of any range, and past exact parsing
    state.image = p.get("image") || null;
    state.layer = p.get("layer") || null;
    const channel = given("channel", whole, "a channel of this layer; showing the strongest channel");
    state.channel = channel === null ? null : parseInt(channel, 10);
    const unit = given("unit", (t) => /^\d{1,9},\d{1,9}$/.test(t), "ROW,COL; showing the channel's strongest unit");
    state.unit = unit === null ? null : unit.split(",").map(Number);
    const known = (values) => (text) => values.includes(text);
    state.method = given("method", known(config.methods), "one of " + config.methods.join(", ") + "; showing deconvnet") || "deconvnet";
    state.scale = given("scale", known(config.scales), "one of " + config.scales.join(", ") + "; showing robust") || "robust";
    const steps = given("steps", whole, "a step of the way down; it is closed");
    state.steps = steps === null ? null : parseInt(steps, 10);
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
    relink();
    const target = address();
    if (target === location.search) return;
    if (replace) history.replaceState(null, "", target);
    else history.pushState(null, "", target);
  }

  // -------------------------------------------------------------------------------------------- pictures

  // A link that makes `change` to the page's state when clicked, without a reload; its address is the whole
  // view with that change (relink keeps it so as the view changes), so it can be opened in a new tab or shared.
  function chooser(change) {
    const a = document.createElement("a");
    a.dataset.change = JSON.stringify(change);
    a.href = hrefOf(change);
    a.addEventListener("click", (event) => {
      if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return; // a new tab
      event.preventDefault();
      choose(change);
    });
    return a;
  }

  function relink() {
    for (const a of document.querySelectorAll("a[data-change]")) {
      const target = hrefOf(JSON.parse(a.dataset.change));
      if (a.getAttribute("href") !== target) a.setAttribute("href", target);
    }
  }

  async function loadStrip(around) {
    // around: a picture's id, to open the strip on the page that holds it (an unknown id: the current page)
    let found = null;
    if (around) {
      try {
        found = await getJSON(api("/api/images", { image: around, limit: config.pageSize }, false));
      } catch (error) {
        if (error.status !== 404) throw error;
      }
    }
    if (!found) found = await getJSON(api("/api/images", { offset: stripOffset, limit: config.pageSize }, false));
    const { body, response } = found;
    // An address may name the picture by its file name (image=cat.jpg): the page goes on with its id.
    const named = around && around === state.image && !body.some((e) => e.id === around) ? body.filter((e) => e.name === around) : [];
    if (named.length === 1) state.image = named[0].id;
    stripOffset = parseInt(response.headers.get("x-offset") || String(stripOffset), 10);
    total = parseInt(response.headers.get("x-total-count") || String(body.length), 10);
    const strip = $("strip");
    strip.replaceChildren();
    for (const entry of body) {
      const a = chooser({ image: entry.id, channel: null, unit: null });
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
      showError("the upload is over the limit of " + mebibytes(config.uploadLimit) + "; send a smaller picture");
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

  function drawLayers() {
    const nav = $("layers");
    nav.replaceChildren();
    for (const layer of layers) {
      const a = chooser({ layer: layer.name, channel: null, unit: null });
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
    relink();
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
    busy(true);
    const key = state.image + "\u0000" + state.layer;
    let stage = "picture"; // what a failure leaves on screen: nothing of the view ("picture") or its grid ("unit")
    $("picture").src = api("/api/image.png", { image: state.image }, false);
    try {
      if (key !== shownKey || !activations) {
        activations = null;
        shownKey = null;
        const { body } = await getJSON(api("/api/activations", { image: state.image, layer: state.layer, method: state.method }));
        if (mine !== seq) return;
        activations = body;
        shownKey = key;
        drawGrid(true);
      }
      stage = "unit";
      if (state.channel === null || state.channel >= activations.shape[0]) {
        if (state.channel !== null) {
          notice("channel " + state.channel + " is out of range for layer " + state.layer + " (0-" + (activations.shape[0] - 1) + "); showing the strongest channel");
        }
        state.channel = activations.channels.length ? activations.channels[0].channel : 0;
        state.unit = null;
        remember(true);
      }
      const [, rows, cols] = activations.shape;
      const flat = activations.shape.length !== 3;
      if (state.unit && (flat || state.unit[0] >= rows || state.unit[1] >= cols)) {
        const map = flat ? "layer " + state.layer + " has no map" : "it is outside the " + rows + "x" + cols + " map of layer " + state.layer;
        notice("unit " + state.unit.join(",") + ": " + map + "; showing the channel's strongest unit");
        state.unit = null;
        remember(true);
      }
      markGrid();
      await showUnit(mine);
      if (mine === seq) busy(false);
    } catch (error) {
      if (mine !== seq || superseded(error)) return;
      busy(false);
      // The new view could not be shown: leave nothing of the previous one beside it.
      blank(stage === "picture");
      if (error.status === 404 && stage === "picture") {
        showError("picture " + JSON.stringify(state.image) + " is not in this explorer: pick a picture above "
          + "(uploaded pictures are forgotten when the explorer stops)");
      } else {
        fail(error);
      }
    }
  }

  function busy(on) {
    // While a view is on its way the panels on screen are the last one's: dimmed, and the unit line says so.
    $("view").classList.toggle("busy", on);
    $("unit-busy").hidden = !on;
  }

  function blank(all) {
    // Clear the unit's panels (and with `all` the picture, the grid and the channel's number) after a failure;
    // the buttons that act on the unit wait for one.
    for (const id of ["projection", "map"]) $(id).removeAttribute("src");
    for (const id of ["box", "marker", "step-box"]) $(id).hidden = true;
    const patch = $("patch");
    patch.style.backgroundImage = "none";
    $("unit").textContent = "";
    $("topk").replaceChildren();
    $("topk-status").textContent = "";
    clearTimeout(topkTimer);
    topkKey = null;
    $("steps-panel").hidden = true;
    stepsShown = null;
    closeOcclusion();
    $("occlude").disabled = $("way-down").disabled = true;
    if (all) {
      $("picture").removeAttribute("src");
      $("grid").replaceChildren();
      $("grid-count").textContent = "";
      $("more").hidden = true;
      activations = null;
    }
  }

  async function showUnit(mine) {
    const params = unitParams();
    const { body } = await getJSON(api("/api/unit", params));
    if (mine !== seq) return;
    showError("");
    $("occlude").disabled = $("way-down").disabled = false;
    shownActivation = body.activation;
    $("map").src = api("/api/activations.png", { image: state.image, layer: state.layer, channel: state.channel }, false);
    $("projection").src = api("/api/projection.png", { ...params, scale: state.scale });
    const size = body.size || [224, 224];
    drawBox($("box"), body.box, size);
    drawPatch(body.box, size);
    drawMarker(body.position);
    lastUnit = body.position || null;
    const where = body.position ? " unit (" + body.position.join(", ") + ")" : "";
    // The field's last row and column, not one past them: a 3-pixel field reads "rows 122-124".
    const box = body.box ? "  field rows " + body.box[0] + "-" + (body.box[2] - 1) + ", cols " + body.box[1] + "-" + (body.box[3] - 1) : "";
    $("map-caption").textContent = body.position ? "activation map: click a unit" : "this layer has no map: one value per channel";
    $("unit").textContent = state.layer + " ch " + body.channel + where + "  a=" + number(body.activation) + box + "  (" + state.method + ", " + state.scale + ")";
    $("projection-caption").textContent = state.method + " projection";
    if (occlusionKey !== null && occlusionKey !== occlusionOf()) closeOcclusion(); // it spoke of another channel
    loadTopk();
    await showSteps(mine);
  }

  // -------------------------------------------------------------------------------------------- occlusion

  function occlusionOf() {
    return JSON.stringify({ image: state.image, layer: state.layer, channel: state.channel });
  }

  function closeOcclusion() {
    occlusionKey = null;
    $("occlusion-panel").hidden = true;
    $("occlusion").removeAttribute("src");
    $("occlusion-picture").removeAttribute("src");
    $("occlusion-caption").textContent = "";
    $("occlusion-status").textContent = "";
  }

  async function occlude() {
    if (!state.image || !state.layer || state.channel === null) return;
    const key = occlusionOf();
    const params = JSON.parse(key);
    occlusionKey = key;
    $("occlusion-panel").hidden = false;
    $("occlusion").removeAttribute("src");
    $("occlusion-picture").src = api("/api/image.png", { image: state.image }, false);
    $("occlusion-caption").textContent = "";
    $("occlusion-status").textContent = "(sliding the grey square over the picture...)";
    try {
      const { body } = await getJSON(api("/api/occlusion", params));
      if (occlusionKey !== key) return;
      $("occlusion").src = api("/api/occlusion.png", params, false); // kept by the server: no model work
      $("occlusion-status").textContent = "(" + body.rows.length + " x " + body.cols.length + " positions)";
      $("occlusion-caption").textContent = state.layer + " ch " + body.channel + ", a grey " + body.size
        + "-px square (the mean colour) moved by " + body.stride + " px: darkest where hiding that part lowers the "
        + "channel's total activation most (to " + number(Math.min(...body.totals.flat())) + "), palest where least ("
        + number(Math.max(...body.totals.flat())) + "); " + number(body.unoccluded) + " with nothing hidden";
    } catch (error) {
      if (occlusionKey !== key) return;
      $("occlusion-status").textContent = "";
      if (superseded(error)) { closeOcclusion(); return; }
      fail(error);
    }
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
      notice("step " + state.steps + " is past the way down's last (" + (steps.length - 1) + "); showing the last");
      state.steps = steps.length - 1;
      remember(true);
    }
    const step = steps[state.steps];
    $("step-count").textContent = "(step " + step.index + " of 0-" + (steps.length - 1) + ": seed first, pixels last)";
    $("step-prev").disabled = state.steps === 0;
    $("step-next").disabled = state.steps === steps.length - 1;
    const undid = step.ops.length ? " undoing " + step.ops.join(" + ") : "";
    const at = state.steps === steps.length - 1 ? "the input" : step.name + (step.name !== step.node ? " (" + step.node + ")" : "");
    $("step-label").textContent = step.kind + undid + "  at " + at + "  " + step.shape.join("x");
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

  function drawPatch(box, size) {
    crop($("patch"), api("/api/image.png", { image: state.image }, false), box, size, 224);
  }

  function drawMarker(position) {
    const map = activations && activations.shape.length === 3 ? activations.shape.slice(1) : null;
    drawBox($("marker"), position && map ? [position[0], position[1], position[0] + 1, position[1] + 1] : null, map);
  }

  function drawGrid(fresh) {
    const grid = $("grid");
    if (fresh) { grid.replaceChildren(); gridShown = 0; }
    const channels = activations.channels;
    const until = Math.min(channels.length, gridShown + GRID_PAGE);
    for (let i = gridShown; i < until; i++) {
      const item = channels[i];
      const a = chooser({ channel: item.channel, unit: null });
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
    const key = JSON.stringify(want);
    if (key !== topkKey) {
      // Another unit: its hits are not those on screen, so none are shown until they arrive.
      $("topk").replaceChildren();
      $("topk-status").textContent = "loading";
      topkKey = key;
    }
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
      // One hit per picture, where the channel fires: fewer than k when it fires on fewer pictures.
      const fewer = body.hits.length && body.hits.length < Math.min(body.k, body.total) ? "(it fires on " + body.hits.length + " of the " + body.total + " pictures)" : "";
      status.textContent = body.message || [body.source === "report" ? "(from the report)" : "", fewer].filter(Boolean).join(" ");
    }
    panel.replaceChildren();
    for (const hit of body.hits) {
      // A hit on a layer without a 2-D map has no position: its unit is the channel itself.
      const target = { image: hit.image, layer: state.layer, channel: state.channel, unit: hit.position };
      const a = hit.image ? chooser(target) : document.createElement("a");
      a.addEventListener("click", (event) => { // the view changes up there: bring it into sight
        if (event.defaultPrevented) $("view").scrollIntoView({ block: "nearest" });
      });
      const mark = hit.image === state.image && (!state.unit || JSON.stringify(hit.position) === JSON.stringify(state.unit));
      a.classList.toggle("current", mark);
      const pair = document.createElement("div");
      pair.className = "pair";
      const rec = document.createElement("div");
      const patch = document.createElement("div");
      rec.className = patch.className = "crop";
      for (const part of [rec, patch]) { // a field cut at the picture's edge is smaller: centred in its square
        const frame = document.createElement("div");
        frame.className = "crop-frame";
        frame.appendChild(part);
        pair.appendChild(frame);
      }
      const label = document.createElement("div");
      label.textContent = "a=" + number(hit.value) + (hit.edge ? " edge " : " ") + hit.name;
      a.append(pair, label);
      a.title = hit.name + (hit.position ? ", unit (" + hit.position.join(", ") + ")" : "") + (hit.edge ? ", its field reaching past the picture" : "");
      if (hit.image) {
        const size = layerSize();
        const params = { image: hit.image, layer: state.layer, channel: state.channel, method: state.method, scale: state.scale };
        if (hit.position) params.position = hit.position.join(",");
        crop(rec, api("/api/projection.png", params), hit.box, size, 80);
        crop(patch, api("/api/image.png", { image: hit.image }, false), hit.box, size, 80);
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
    notice("");
    Object.assign(state, change);
    remember(false);
    render();
  }

  $("map").tabIndex = 0;
  $("map").addEventListener("keydown", (event) => {
    // The arrow keys move the unit on a focused map, as a click would choose it.
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (!(event.key in moves) || !activations || activations.shape.length !== 3 || !lastUnit) return;
    event.preventDefault();
    event.stopPropagation();
    const [, h, w] = activations.shape;
    const [dr, dc] = moves[event.key];
    const unit = [Math.min(h - 1, Math.max(0, lastUnit[0] + dr)), Math.min(w - 1, Math.max(0, lastUnit[1] + dc))];
    if (unit[0] !== lastUnit[0] || unit[1] !== lastUnit[1]) { lastUnit = unit; choose({ unit }); }
  });
  $("map").addEventListener("click", (event) => {
    if (!activations || activations.shape.length !== 3) return;
    const rect = event.target.getBoundingClientRect();
    const [, h, w] = activations.shape;
    const row = Math.min(h - 1, Math.max(0, Math.floor((event.clientY - rect.top) / rect.height * h)));
    const col = Math.min(w - 1, Math.max(0, Math.floor((event.clientX - rect.left) / rect.width * w)));
    choose({ unit: [row, col] });
  });
  $("projection").addEventListener("load", () => {
    // A reconstruction of one grey is all zero: say so, so that it does not read as a picture of grey.
    const img = $("projection");
    const flat = oneColour(img);
    const why = shownActivation === 0
      ? ": all zero, this unit does not fire here (a=0), so there is nothing to project"
      : ": all zero, nothing reaches the input from this unit (the way down shows where the signal stops)";
    $("projection-caption").textContent = state.method + " projection" + (flat ? why : "");
    $("projection-caption").dataset.checked = img.src; // which picture the caption speaks of
  });
  $("more").addEventListener("click", () => drawGrid(false));
  $("way-down").addEventListener("click", () => {
    state.steps = state.steps === null ? 0 : null;
    remember(false);
    showSteps(seq).catch(fail);
  });
  $("occlude").addEventListener("click", () => { occlude().catch(fail); });
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
    const shown = [...$("strip").children].some((a) => a.dataset.id === state.image);
    if (state.image && !shown) loadStrip(state.image).catch(fail); // the strip follows to the picture's page
    render();
  });

  async function folderStatus() {
    // The folder, and how far its scan for the top-9 panels is, from the start (the view may wait for the scan).
    let scan = null;
    try { scan = (await getJSON(api("/api/status", {}, false))).body.scan; } catch (error) { scan = null; }
    const scanning = scan && scan.state === "scanning";
    const folder = config.folder ? "folder: " + config.folder : "";
    $("status").textContent = folder + (scanning ? " · scanning " + scan.done + " of " + scan.total + " pictures" : "");
    if (scanning) setTimeout(folderStatus, 1500);
  }

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
      const byNode = layers.find((l) => l.node === state.layer && !layerInfo[state.layer]);
      if (byNode) state.layer = byNode.name; // a node name in the address: the layer as the list names it
      const unknown = state.layer && !layerInfo[state.layer] ? state.layer : null;
      if (unknown) state.layer = null;
      if (!state.layer) state.layer = defaultLayer();
      if (unknown) notice("layer=" + unknown + " is not a layer of this model; showing " + state.layer);
      const first = await loadStrip(state.image);
      if (!state.image && first.length) state.image = first[0].id;
      remember(true);
      folderStatus();
      await render();
    } catch (error) { fail(error); }
  }

  start();
})();
