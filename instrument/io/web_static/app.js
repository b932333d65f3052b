// sdga control page: one WebSocket to the instrument (instrument/io/web.py). Every message sent is an OSC
// message as JSON, {"a": address, "v": [args]}, routed exactly as OSC is; the server sends "hello" (layout,
// values, patches, state), then "values", "patches" and "state" as they change. Reconnects by itself.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
const sliders = {};            // target name -> {input, value, spec, busyUntil}
let ws = null, layoutKey = "", retryMs = 250, octave = 4;

function send(address, ...args) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({a: address, v: args}));
}

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws` +
    (token ? `?token=${encodeURIComponent(token)}` : "");
  ws = new WebSocket(url);
  ws.onopen = () => { retryMs = 250; $("conn").textContent = "connected"; $("conn").className = "on"; };
  ws.onclose = () => {
    $("conn").textContent = "offline (reconnecting)"; $("conn").className = "off";
    setTimeout(connect, retryMs); retryMs = Math.min(retryMs * 2, 2000);
  };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.t === "hello") { build(m.layout); setValues(m.values, true); setPatches(m.patches); setState(m.state); }
    else if (m.t === "values") setValues(m.values, false);
    else if (m.t === "patches") setPatches(m.patches);
    else if (m.t === "state") setState(m.state);
  };
}

// ------------------------------------------------------------------------------------------- sliders
function fmt(spec, knob) {
  if (spec.choices && spec.choices.length) return spec.choices[Math.round(knob * (spec.choices.length - 1))];
  if (spec.unit === "knob") return knob.toFixed(3);
  let v = spec.low + (spec.high - spec.low) * Math.pow(knob, spec.curve);
  if (Math.abs(v) < 0.005) v = 0;
  if (spec.unit === "channel") return v < 0 ? "omni" : String(Math.round(v) + 1);
  const digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${spec.unit}`.trim();
}

function slider(parent, target, label, spec, extra) {
  const row = document.createElement("div");
  row.className = "slider" + (extra.inactive ? " inactive" : "");
  row.dataset.target = target;
  const name = document.createElement("label"); name.textContent = label; name.title = extra.title || target;
  const track = document.createElement("div"); track.className = "track";
  if (extra.band) {
    const band = document.createElement("div"); band.className = "band";
    band.style.left = `${100 * extra.band[0]}%`; band.style.width = `${100 * (extra.band[1] - extra.band[0])}%`;
    const mean = document.createElement("div"); mean.className = "mean"; mean.style.left = `${100 * extra.mean}%`;
    track.append(band, mean);
  }
  const input = document.createElement("input");
  input.type = "range"; input.min = 0; input.max = 1; input.step = 0.001; input.id = `slider-${target}`;
  input.setAttribute("aria-label", label);
  if (spec.choices && spec.choices.length) input.step = 1 / (spec.choices.length - 1);
  const value = document.createElement("span"); value.className = "value";
  const learn = document.createElement("button"); learn.className = "learn"; learn.textContent = "L";
  learn.title = "MIDI learn: click, then move a hardware control";
  learn.onclick = () => send("/sdga/learn", target);
  const s = {input, value, spec, busyUntil: 0, learn, pending: null};
  input.addEventListener("input", () => {
    const knob = parseFloat(input.value);
    s.busyUntil = performance.now() + 400;     // our own echo must not pull the slider back while dragging
    value.textContent = fmt(spec, knob);
    if (s.pending === null) requestAnimationFrame(() => { send(`/sdga/target/${target}`, s.pending); s.pending = null; });
    s.pending = knob;
  });
  track.append(input);
  row.append(name, track, value, learn);
  parent.append(row);
  sliders[target] = s;
}

function build(layout) {
  const key = JSON.stringify(layout);
  if (key === layoutKey) return;
  layoutKey = key;
  for (const k in sliders) delete sliders[k];
  $("model").textContent = layout.card.model || "";
  const latents = $("latents"); latents.innerHTML = "";
  for (const l of layout.latents)
    slider(latents, l.target, l.name, {unit: "knob"}, {inactive: !l.active, band: l.corpus, mean: l.mean,
      title: `${l.target}: z${l.index}, ${l.kl_nats} nats${l.active ? "" : ", inactive"}`});
  const groups = $("groups"); groups.innerHTML = "";
  for (const g of layout.groups) {
    const box = document.createElement("fieldset");
    const legend = document.createElement("legend"); legend.textContent = g.name; box.append(legend);
    for (const p of g.params) slider(box, p.target, p.target.replace(/_(ms|db|semitones)$/, ""), p,
                                     {title: `${p.target}: ${p.doc}`});
    groups.append(box);
  }
  const card = $("card"); card.innerHTML = "";
  for (const [k, v] of Object.entries(layout.card)) {
    const tr = document.createElement("tr");
    const a = document.createElement("td"); a.textContent = k;
    const b = document.createElement("td"); b.textContent = Array.isArray(v) ? v.join(" .. ") : String(v);
    tr.append(a, b); card.append(tr);
  }
}

function setValues(values, force) {
  const now = performance.now();
  for (const [target, [knob]] of Object.entries(values)) {
    const s = sliders[target];
    if (!s || (!force && now < s.busyUntil)) continue;
    s.input.value = knob;
    s.value.textContent = fmt(s.spec, knob);
  }
}

// ------------------------------------------------------------------------------------------- patches, state
function setPatches(p) {
  const box = $("patches"); box.innerHTML = "";
  if (!p.names.length) box.textContent = "no patches (a mapping with 'patches:')";
  p.names.forEach((name, i) => {
    const b = document.createElement("button"); b.textContent = name;
    if (i === p.current) b.className = "current";
    b.onclick = () => send("/sdga/patch", name);
    box.append(b);
  });
}

function setState(s) {
  if (s.load !== undefined) $("load").textContent = s.load === null ? "-" : `${Math.round(100 * s.load)}%`;
  for (const k of ["underflows", "dropped"]) if (s[k] !== undefined) $(k).textContent = s[k];
  if (s.voices !== undefined) $("voices").textContent = `${s.voices}/${s.max_voices}`;
  if (s.level_db !== undefined) {
    $("level").textContent = s.level_db <= -120 ? "-inf dB" : `${s.level_db.toFixed(1)} dB`;
    $("levelbar").value = Math.max(-60, s.level_db);
  }
  if (s.web) $("pages").textContent = s.web.pages;
  for (const t in sliders) sliders[t].learn.classList.toggle("armed", s.learning === t);
  if (s.messages) $("messages").textContent = s.messages.join(" · ");
  if (s.set) setSongs(s.set);
}

let songsKey = "";
function setSongs(set) {                     // sdga-play --set: the songs, the one playing marked
  const key = JSON.stringify(set.songs);
  const box = $("songs");
  if (key !== songsKey) {
    songsKey = key; box.innerHTML = ""; $("set-box").hidden = false;
    set.songs.forEach((name, i) => {
      const b = document.createElement("button"); b.textContent = `${i} ${name}`; b.id = `song-${i}`;
      b.onclick = () => send("/sdga/set/song", i);
      box.append(b);
    });
  }
  box.querySelectorAll("button").forEach((b, i) => b.classList.toggle("current", i === set.current));
}

// ------------------------------------------------------------------------------------------- keyboard
const LOWER = "zsxdcvgbhnjm", UPPER = "q2w3er5t6y7u";        // a tracker's two rows: C..B twice
const BLACK = [1, 3, 6, 8, 10];
const held = new Map();                                         // key id -> MIDI note sounding

function noteOn(id, note, velocity) {
  if (held.has(id)) return;
  held.set(id, note); send("/sdga/note_on", note, velocity);
  const el = document.querySelector(`.key[data-offset="${note - 12 * (octave + 1)}"]`); if (el) el.classList.add("down");
}
function noteOff(id) {
  if (!held.has(id)) return;
  const note = held.get(id); held.delete(id); send("/sdga/note_off", note);
  const el = document.querySelector(`.key[data-offset="${note - 12 * (octave + 1)}"]`); if (el) el.classList.remove("down");
}
function velocityAt(e, el) {
  if ($("fixed-vel").checked) return parseInt($("velocity").value, 10);
  const r = el.getBoundingClientRect();
  return Math.max(1, Math.min(127, Math.round(20 + 107 * (e.clientY - r.top) / r.height)));
}

function buildKeyboard() {
  const kb = $("keyboard"); kb.innerHTML = "";
  const whites = 15, w = 100 / whites;
  let x = 0;
  for (let i = 0; i <= 24; i++) {
    const black = BLACK.includes(i % 12);
    const el = document.createElement("div");
    el.className = `key ${black ? "black" : "white"}`; el.dataset.offset = i;
    el.style.left = `${black ? (x - 0.3) * w : x * w}%`; el.style.width = `${black ? 0.6 * w : w}%`;
    const label = document.createElement("span"); label.textContent = (i < 12 ? LOWER[i] : UPPER[i - 12] || "");
    el.append(label);
    if (!black) x += 1;
    const id = `p${i}`;
    el.addEventListener("pointerdown", (e) => { el.setPointerCapture(e.pointerId);
      noteOn(id, 12 * (octave + 1) + i, velocityAt(e, el)); });
    for (const ev of ["pointerup", "pointercancel", "lostpointercapture"]) el.addEventListener(ev, () => noteOff(id));
    kb.append(el);
  }
}

function shiftOctave(d) { octave = Math.max(0, Math.min(8, octave + d)); $("octave").textContent = octave; }

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" && e.target.type !== "range" && e.target.type !== "checkbox") return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key.toLowerCase();
  if (k === "-" || k === "pagedown") { shiftOctave(-1); return; }
  if (k === "=" || k === "pageup") { shiftOctave(1); return; }
  let i = LOWER.indexOf(k); if (i < 0 && UPPER.indexOf(k) >= 0) i = 12 + UPPER.indexOf(k);
  if (i < 0 || e.repeat) return;
  e.preventDefault();
  noteOn(`k${k}`, 12 * (octave + 1) + i, parseInt($("velocity").value, 10));
});
document.addEventListener("keyup", (e) => noteOff(`k${e.key.toLowerCase()}`));
window.addEventListener("blur", () => { for (const id of [...held.keys()]) noteOff(id); });

$("oct-down").onclick = () => shiftOctave(-1);
$("oct-up").onclick = () => shiftOctave(1);
$("velocity").oninput = () => { $("velocity-value").textContent = $("velocity").value; };
$("panic").onclick = () => send("/sdga/panic");
$("show-inactive").onchange = (e) => document.body.classList.toggle("show-inactive", e.target.checked);
$("save").onsubmit = (e) => { e.preventDefault(); send("/sdga/save", $("save-name").value); };
buildKeyboard();
connect();
