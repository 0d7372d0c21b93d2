// dialog-events console: follow one dialog live (GraphQL subscription over graphql-transport-ws)
// and look at a webhook subscriber's deliveries and dead letters. Plain browser JavaScript, no
// build step. It uses only the public REST, realtime (graphql-transport-ws) and webhook APIs.
(function () {
  "use strict";

  const SUBSCRIPTION =
    "subscription ($id: UUID!, $after: Int) { " +
    "dialogEvents(dialogId: $id, afterSequence: $after) { id type sequence revision resync } }";
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 5000;
  const MAX_EVENTS = 1000;
  const DEV_TOKEN_PATH = "/dev/token"; // the development issuer, while it is enabled
  const STORE = "dialog-events.console.";

  const $ = (id) => document.getElementById(id);

  // State the automated tests read.
  const state = (window.consoleState = { lastSequence: null, status: "idle", events: [], dialog: null });

  // ---- small helpers ----

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function say(id, text, kind) {
    const node = $(id);
    node.textContent = text || "";
    node.dataset.kind = kind || "";
  }

  const pad = (n, w) => String(n).padStart(w || 2, "0");

  // Local time of day with milliseconds ("14:03:07.125"); now when no time is given.
  function clock(iso) {
    const d = iso ? new Date(iso) : new Date();
    return isNaN(d) ? String(iso) : pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
  }

  // Local date and time ("2025-01-31 14:03:07").
  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + clock(iso).slice(0, 8);
  }

  function jsonView(value, label) {
    return el("details", { class: "json" }, el("summary", {}, label || "JSON"),
      el("pre", {}, JSON.stringify(value, null, 2)));
  }

  // The claims of a JWT, unverified (only to show scope/expiry and pick an API path).
  function claimsOf(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const bytes = Uint8Array.from(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (_) {
      return null;
    }
  }

  const bearer = () => $("bearer").value.trim();
  const dialogToken = () => $("token").value.trim();
  const scopesOf = (token) => String((claimsOf(token) || {}).scope || "").split(/\s+/).filter(Boolean);

  // fetch with the bearer token; JSON and problem+json bodies parsed.
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (bearer()) headers.Authorization = "Bearer " + bearer();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      return { ok: false, status: 0, body: null, error: "network error: " + e.message };
    }
    const type = res.headers.get("content-type") || "";
    const text = await res.text();
    let parsed = text;
    if (/json/.test(type) && text) {
      try { parsed = JSON.parse(text); } catch (_) { /* keep the text */ }
    }
    let error = null;
    if (!res.ok) {
      const p = parsed && typeof parsed === "object" ? parsed : {};
      error = res.status + " " + (p.title || res.statusText) + (p.detail ? ": " + p.detail : typeof parsed === "string" && parsed ? ": " + parsed.slice(0, 200) : "");
    }
    return { ok: res.ok, status: res.status, body: parsed, error };
  }

  // ---- tokens ----

  function showTokenInfo() {
    const parts = [];
    const c = claimsOf(dialogToken());
    const expiry = (t) => (t.exp ? ", expires " + when(t.exp * 1000) + (t.exp * 1000 < Date.now() ? " (expired)" : "") : "");
    if (c) parts.push("dialog token: dialog " + (c.i || "?") + expiry(c));
    const b = claimsOf(bearer());
    if (b) parts.push("bearer: scope \"" + (b.scope || "") + "\"" + expiry(b));
    $("token-info").textContent = parts.join(" · ");
    sessionStorage.setItem(STORE + "token", dialogToken());
    sessionStorage.setItem(STORE + "bearer", bearer());
  }

  // The node mints development tokens at POST /dev/token {scope, pid | org, ttl} while its
  // development issuer is enabled (404 otherwise); the console then explains the CLI way.
  async function mint() {
    const scope = $("mint-scope").value.trim();
    const party = $("mint-party").value.trim();
    const body = { scope };
    if (/^\d{11}$/.test(party)) body.pid = party;
    else if (/^\d{9}$/.test(party)) body.org = party;
    else if (party) return say("mint-msg", "Person numbers have 11 digits, organisation numbers 9.", "bad");
    say("mint-msg", "Minting…");
    const r = await api("POST", DEV_TOKEN_PATH, body);
    if (r.status === 404 || r.status === 405) {
      return say("mint-msg", "This node does not mint tokens over HTTP (" + r.status + " from POST " + DEV_TOKEN_PATH +
        "). Mint one with: dialog-events token --scope \"" + scope + "\"" +
        (body.pid ? " --pid " + body.pid : body.org ? " --org " + body.org : "") + " and paste it above.", "bad");
    }
    if (r.status === 403) return say("mint-msg", "The development issuer is disabled on this node (" + r.error + ").", "bad");
    if (!r.ok) return say("mint-msg", "Minting failed: " + r.error, "bad");
    const token = typeof r.body === "string" ? r.body.trim() : r.body && (r.body.token || r.body.access_token);
    if (!token) return say("mint-msg", "The answer held no token.", "bad");
    $("bearer").value = token;
    showTokenInfo();
    say("mint-msg", "Minted: the bearer token is set.", "ok");
  }

  // ---- the dialog (REST) ----

  // An end-user read when the bearer has the end-user scope (it may emit `seen`), else the
  // service-owner read. Both answer the dialog with a fresh `dialogToken`.
  function dialogPath(id) {
    const scopes = scopesOf(bearer());
    const owner = scopes.includes("digdir:dialogporten.serviceprovider") && !scopes.includes("digdir:dialogporten");
    return (owner ? "/api/v1/serviceowner/dialogs/" : "/api/v1/enduser/dialogs/") + encodeURIComponent(id);
  }

  async function readDialog(id) {
    if (!bearer()) return null;
    const path = dialogPath(id);
    const r = await api("GET", path);
    if (!r.ok) {
      say("dialog-msg", "GET " + path + ": " + r.error, "bad");
      if (r.status === 410) renderDialog(null, "The dialog is deleted (410 Gone).");
      return null;
    }
    const d = r.body;
    state.dialog = d;
    if (d.dialogToken) {
      $("token").value = d.dialogToken;
      showTokenInfo();
    }
    say("dialog-msg", "Read at " + clock() + " from GET " + path, "ok");
    renderDialog(d);
    return d;
  }

  function titleOf(d) {
    const list = (d.content && d.content.title) || [];
    const pick = list.find((t) => t.languageCode === "nb") || list.find((t) => t.languageCode === "en") || list[0];
    return pick ? pick.value : "(no title)";
  }

  function renderDialog(d, note) {
    const box = $("dialog");
    box.textContent = "";
    if (!d) {
      if (note) box.append(el("p", { class: "msg", "data-kind": "bad" }, note));
      return;
    }
    const rows = [
      ["title", titleOf(d)], ["id", d.id], ["status", d.status + (d.extendedStatus ? " · " + d.extendedStatus : "")],
      ["progress", d.progress], ["service resource", d.serviceResource], ["party", d.party],
      ["sequence", d.sequence], ["revision", d.revision], ["updated", when(d.updatedAt)],
      ["deleted", d.deletedAt ? when(d.deletedAt) : null], ["process", d.process],
      ["activities", (d.activities || []).length], ["transmissions", (d.transmissions || []).length],
      ["seen since update", (d.seenSinceLastUpdate || []).map((s) => s.seenBy).join(", ") || "nobody"],
    ];
    const dl = el("dl", {});
    for (const [k, v] of rows) {
      if (v === null || v === undefined || v === "") continue;
      dl.append(el("dt", {}, k), el("dd", {}, String(v)));
    }
    const copy = Object.assign({}, d);
    if (copy.dialogToken) copy.dialogToken = copy.dialogToken.slice(0, 24) + "…";
    box.append(dl, jsonView(copy, "Whole dialog (JSON)"));
  }

  // ---- live: graphql-transport-ws, spoken directly ----

  const live = { socket: null, gen: 0, dialogId: null, backoff: BACKOFF_FIRST_MS, timer: null, ops: 0, retriedAt: 0 };

  function setStatus(s, detail) {
    state.status = s;
    const node = $("status");
    node.textContent = s;
    node.dataset.status = s;
    node.title = detail || "";
  }

  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/graphql";
  }

  function stopLive() {
    live.gen++;
    clearTimeout(live.timer);
    if (live.socket) {
      try { live.socket.close(1000, "done"); } catch (_) { /* already closed */ }
      live.socket = null;
    }
  }

  function connect(first) {
    stopLive();
    const gen = live.gen;
    const opId = String(++live.ops);
    setStatus(first ? "connecting" : "reconnecting");
    const ws = new WebSocket(wsUrl(), "graphql-transport-ws");
    live.socket = ws;
    const send = (msg) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(msg));

    ws.onopen = () => {
      const token = dialogToken();
      send({ type: "connection_init", payload: token ? { Authorization: "Bearer " + token } : {} });
    };
    ws.onmessage = (m) => {
      if (gen !== live.gen) return;
      let msg;
      try { msg = JSON.parse(m.data); } catch (_) { return; }
      switch (msg.type) {
        case "connection_ack": {
          live.backoff = BACKOFF_FIRST_MS;
          const variables = { id: live.dialogId };
          if (state.lastSequence !== null) variables.after = state.lastSequence;
          send({ id: opId, type: "subscribe", payload: { query: SUBSCRIPTION, variables } });
          // The protocol does not confirm a subscription: "live" once no error came back for a
          // moment, or at the first payload.
          const detail = "subscribed" + (variables.after !== undefined ? " after sequence " + variables.after : "");
          setStatus("subscribing", detail);
          live.timer = setTimeout(() => gen === live.gen && state.status === "subscribing" && setStatus("live", detail), 250);
          break;
        }
        case "next":
          if (msg.id !== opId) break;
          if (state.status === "subscribing") setStatus("live", $("status").title);
          if (msg.payload && msg.payload.errors) onErrors(msg.payload.errors);
          if (msg.payload && msg.payload.data && msg.payload.data.dialogEvents) onPayload(msg.payload.data.dialogEvents);
          break;
        case "error":
          if (msg.id === opId) onErrors(msg.payload, true);
          break;
        case "complete":
          if (msg.id === opId && state.status !== "unauthorized" && state.status !== "error") {
            stopLive();
            setStatus("ended", "the server completed the subscription");
          }
          break;
        case "ping":
          send({ type: "pong", payload: msg.payload });
          break;
      }
    };
    ws.onclose = (ev) => {
      if (gen !== live.gen) return; // closed on purpose or superseded
      live.socket = null;
      if (ev.code === 4403) return unauthorized("the server refused the dialog token (close 4403)");
      reconnectLater("closed " + ev.code + (ev.reason ? " " + ev.reason : ""));
    };
  }

  function reconnectLater(why) {
    const delay = live.backoff;
    live.backoff = Math.min(live.backoff * 2, BACKOFF_MAX_MS);
    setStatus("reconnecting", why + "; again in " + delay + " ms");
    clearTimeout(live.timer);
    const gen = live.gen;
    live.timer = setTimeout(async () => {
      if (gen !== live.gen) return;
      // A stream outlives its token, but a new one needs a valid token: re-read for a fresh one.
      const c = claimsOf(dialogToken());
      if (bearer() && (!c || c.exp * 1000 < Date.now() + 5000)) await readDialog(live.dialogId);
      if (gen === live.gen) connect(false);
    }, delay);
  }

  // Wrong or expired token: re-read the dialog for a fresh token and resubscribe (at most every 30 s).
  async function unauthorized(why) {
    stopLive();
    setStatus("unauthorized", why);
    say("dialog-msg", "Not authorized: " + why + (bearer() ? "" : ". Paste a fresh dialog token or a bearer token."), "bad");
    if (bearer() && Date.now() - live.retriedAt > 30000) {
      live.retriedAt = Date.now();
      const gen = live.gen;
      if ((await readDialog(live.dialogId)) && gen === live.gen) connect(false);
    }
  }

  function onErrors(errors, final) {
    const list = Array.isArray(errors) ? errors : [errors];
    const text = list.map((e) => e.message + (e.extensions && e.extensions.code ? " [" + e.extensions.code + "]" : "")).join("; ");
    if (list.some((e) => e.extensions && e.extensions.code === "UNAUTHORIZED")) return unauthorized(text);
    say("dialog-msg", "GraphQL error: " + text, "bad");
    if (final) {
      stopLive();
      setStatus("error", text);
    }
  }

  function onPayload(p) {
    const record = {
      id: p.id, type: p.type, sequence: p.sequence, revision: p.revision, resync: !!p.resync,
      receivedAt: new Date().toISOString(),
      outOfOrder: state.lastSequence !== null && !p.resync && p.sequence <= state.lastSequence,
    };
    if (state.lastSequence === null || p.sequence > state.lastSequence || p.resync) state.lastSequence = p.sequence;
    state.events.push(record);
    if (state.events.length > MAX_EVENTS) state.events.shift();
    renderEvent(record, p);

    if (p.resync) {
      $("resync-banner").hidden = false;
      readDialog(live.dialogId).then((d) => {
        if (!d && !bearer()) say("dialog-msg", "Resync asked for, but there is no bearer token to re-read the dialog with.", "bad");
      });
    } else if (p.type === "DIALOG_DELETED" || $("auto-reload").checked) {
      readDialog(live.dialogId);
    }
  }

  function renderEvent(r, payload) {
    const list = $("events");
    const badges = [];
    if (r.resync) badges.push(el("span", { class: "badge resync" }, "resync"));
    if (r.outOfOrder) badges.push(el("span", { class: "badge warn", title: "sequence not above the previous one" }, "out of order"));
    list.prepend(el("li", { class: "event", "data-type": r.type, "data-sequence": r.sequence, "data-id": r.id },
      el("div", { class: "event-head" },
        el("span", { class: "seq", title: "dialogsequence of the change's last event" }, "#" + r.sequence),
        el("span", { class: "type" }, r.type), badges,
        el("time", { datetime: r.receivedAt, title: "received" }, clock(r.receivedAt))),
      jsonView(payload)));
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    $("events-count").textContent = "(" + state.events.length + ", last #" + state.lastSequence + ")";
  }

  async function open() {
    const id = $("dialog-id").value.trim();
    if (!id) return say("dialog-msg", "Enter a dialog id.", "bad");
    if (!bearer() && !dialogToken()) return say("dialog-msg", "Paste a bearer token (to read the dialog) or a dialog token.", "bad");
    sessionStorage.setItem(STORE + "dialog", id);
    stopLive();
    live.dialogId = id;
    live.backoff = BACKOFF_FIRST_MS;
    live.retriedAt = 0;
    state.events = [];
    state.lastSequence = null;
    state.dialog = null;
    $("events").textContent = "";
    $("events-count").textContent = "";
    $("resync-banner").hidden = true;
    renderDialog(null);
    say("dialog-msg", "");
    setStatus("connecting");

    const d = await readDialog(id);
    if (!d && !dialogToken()) return setStatus("idle");
    if (!d && bearer()) say("dialog-msg", $("dialog-msg").textContent + " · following with the pasted dialog token", "bad");
    if (!d && !bearer()) say("dialog-msg", "No bearer token: the dialog is not read, only followed.");
    // Subscribe after what was read (no change between the read and the subscription is lost),
    // or from the start of the retained history.
    if ($("history").checked) state.lastSequence = 0;
    else if (d && Number.isInteger(d.sequence)) state.lastSequence = d.sequence;
    connect(true);
  }

  // ---- webhook subscriptions, deliveries, dead letters ----

  const hooks = { selected: null, timer: null };

  async function loadSubs() {
    say("subs-msg", "Loading…");
    const r = await api("GET", "/events/api/v1/subscriptions");
    const list = $("subs");
    list.textContent = "";
    if (!r.ok) return say("subs-msg", "GET /events/api/v1/subscriptions: " + r.error, "bad");
    const subs = Array.isArray(r.body) ? r.body : r.body.subscriptions || [];
    say("subs-msg", subs.length ? subs.length + " subscription(s); pick one." : "No subscriptions for this token.");
    for (const s of subs) {
      const flags = [s.validated ? "validated" : "not validated", s.disabled ? "disabled" + (s.disabledReason ? ": " + s.disabledReason : "") : null].filter(Boolean).join(", ");
      list.append(el("li", { class: "sub" + (s.id === hooks.selected ? " selected" : ""), "data-id": s.id },
        el("button", { type: "button", class: "sub-pick", onclick: () => selectSub(s.id) },
          el("span", { class: "endpoint" }, s.endPoint),
          el("span", { class: "filters" }, [s.resourceFilter, s.typeFilter, s.subjectFilter, s.sourceFilter].filter(Boolean).join(" · ")),
          el("span", { class: "flags" + (s.disabled ? " bad" : "") }, flags, " · ", s.id))));
    }
  }

  function selectSub(id) {
    hooks.selected = id;
    for (const li of $("subs").children) li.classList.toggle("selected", li.dataset.id === id);
    $("redrive-all").disabled = false;
    refreshHooks();
    clearInterval(hooks.timer);
    hooks.timer = setInterval(() => { if (!document.hidden) refreshHooks(); }, 5000);
  }

  function refreshHooks() {
    return Promise.all([loadDeliveries(), loadDeadLetters()]);
  }

  async function loadDeliveries() {
    const id = hooks.selected;
    const path = "/events/api/v1/subscriptions/" + encodeURIComponent(id) + "/deliveries";
    const r = await api("GET", path);
    if (id !== hooks.selected) return;
    const body = $("deliveries");
    body.textContent = "";
    if (!r.ok) return say("deliveries-msg", "GET " + path + ": " + r.error, "bad");
    const rows = (Array.isArray(r.body) ? r.body : r.body.deliveries || []).slice();
    rows.sort((a, b) => String(b.at || "").localeCompare(String(a.at || "")));
    say("deliveries-msg", rows.length ? "" : "No attempts yet.");
    for (const d of rows) {
      const code = d.statusCode !== undefined ? d.statusCode : d.status;
      const good = code >= 200 && code < 300;
      body.append(el("tr", { class: "delivery " + (good ? "ok" : "bad") },
        el("td", { class: "nowrap" }, when(d.at)), el("td", { class: "mono" }, d.eventId || d.id || ""),
        el("td", {}, d.attempt), el("td", {}, code === null || code === undefined ? "–" : code),
        el("td", {}, d.error || ""), el("td", {}, d.durationMs !== undefined ? d.durationMs : d.duration || ""),
        el("td", {}, d.nextAttempt ? when(d.nextAttempt) : "")));
    }
  }

  async function loadDeadLetters() {
    const id = hooks.selected;
    const r = await api("GET", "/admin/v1/dead-letters");
    if (id !== hooks.selected) return;
    const list = $("dead-letters");
    list.textContent = "";
    if (!r.ok) {
      const hint = r.status === 403 ? " (needs scope dialog-events:admin)" : "";
      return say("dead-msg", "GET /admin/v1/dead-letters: " + r.error + hint, "bad");
    }
    const all = Array.isArray(r.body) ? r.body : r.body.deadLetters || [];
    const mine = all.filter((l) => l.subscriptionId === id);
    say("dead-msg", mine.length ? "" : "No dead letters for this subscription.");
    for (const l of mine) {
      const ev = l.event || {};
      list.append(el("li", { class: "dead-letter", "data-id": l.id },
        el("div", { class: "dl-head" },
          el("span", { class: "type" }, ev.type || "?"),
          ev.dialogsequence !== undefined ? el("span", { class: "seq" }, "#" + ev.dialogsequence) : null,
          el("button", { type: "button", class: "redrive", onclick: () => redrive({ ids: [l.id] }) }, "Redrive")),
        el("div", { class: "dl-meta" }, l.attempts + " attempts · last " + (l.lastStatus || "no answer") +
          (l.lastError ? " · " + l.lastError : "") + " · dead " + when(l.deadAt)),
        jsonView(ev, "Event")));
    }
  }

  async function redrive(body) {
    say("dead-msg", "Redriving…");
    const r = await api("POST", "/admin/v1/dead-letters/redrive", body);
    if (!r.ok) return say("dead-msg", "POST /admin/v1/dead-letters/redrive: " + r.error, "bad");
    const n = r.body && typeof r.body === "object" && r.body.redriven !== undefined ? r.body.redriven : "?";
    await refreshHooks();
    say("dead-msg", "Redriven: " + n + ".", "ok");
  }

  // ---- start ----

  function init() {
    const q = new URLSearchParams(location.search);
    $("token").value = q.get("token") || sessionStorage.getItem(STORE + "token") || "";
    $("bearer").value = q.get("bearer") || sessionStorage.getItem(STORE + "bearer") || "";
    $("dialog-id").value = q.get("dialog") || sessionStorage.getItem(STORE + "dialog") || "";
    showTokenInfo();

    $("token").addEventListener("input", showTokenInfo);
    $("bearer").addEventListener("input", showTokenInfo);
    $("mint").addEventListener("click", mint);
    $("open-form").addEventListener("submit", (e) => { e.preventDefault(); open(); });
    $("clear-events").addEventListener("click", () => {
      $("events").textContent = "";
      state.events = [];
      $("events-count").textContent = "";
    });
    $("load-subs").addEventListener("click", loadSubs);
    $("redrive-all").addEventListener("click", () => hooks.selected && redrive({ subscriptionId: hooks.selected }));

    // Tokens do not stay in the address bar (or in the history).
    if (q.has("token") || q.has("bearer")) {
      q.delete("token");
      q.delete("bearer");
      window.history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : "") + location.hash);
    }
    if (q.get("dialog")) open();
    if (bearer() && scopesOf(bearer()).includes("altinn:events.subscribe")) loadSubs();
  }

  init();
})();
