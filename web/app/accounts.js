// Accounts: add a WhatsApp account and link it (QR or phone code), see honest states, act.

import { ApiError, api } from "./api.js";
import { clear, formatBytes, h } from "./dom.js";
import { formatDateTime, t } from "./i18n.js";
import * as realtime from "./realtime.js";

const STATE_TONE = {
  connected: "ok",
  connecting: "wait",
  starting: "wait",
  pairing: "wait",
  qr_required: "wait",
  reconnecting: "warn",
  qr_expired: "warn",
  stopped: "idle",
  replaced: "warn",
  logged_out: "bad",
  banned: "bad",
  auth_failed: "bad",
  failed: "bad",
};

// The latest next-attempt time of each session: from GET /sessions, refreshed by live events.
const nextAttempt = new Map();

export function stateText(session) {
  const state = session.state;
  if (state === "reconnecting") {
    const live = nextAttempt.get(session.id);
    const loaded = session.next_attempt_at;
    const at = live && (!loaded || new Date(live) > new Date(loaded)) ? live : loaded;
    return at ? t("state.reconnecting_at", { time: formatDateTime(at) }) : t("state.reconnecting");
  }
  if (state === "banned" && session.banned_until) {
    return t("state.banned_until", { time: formatDateTime(session.banned_until) });
  }
  if (state === "failed" && session.last_error) {
    return t("state.failed_with", { error: session.last_error });
  }
  return t(`state.${state}`, {}, state);
}

export function stateBadge(session) {
  return h(
    "span",
    {
      class: `badge tone-${STATE_TONE[session.state] || "idle"}`,
      dataset: { state: session.state },
    },
    stateText(session),
  );
}

export async function renderAccounts(view) {
  let sessions = [];
  let pairing = null; // the pairing panel's controller, when open
  const list = h("ul", { class: "accounts", "aria-label": t("accounts.list") });
  const status = h("p", { class: "form-error", role: "alert" });
  const name = h("input", {
    id: "account-name", name: "name", required: true, maxlength: 100,
    placeholder: t("accounts.name_placeholder"),
  });
  const addForm = h(
    "form",
    { class: "add-account card", "aria-labelledby": "add-title" },
    h("h2", { id: "add-title" }, t("accounts.add")),
    h("label", { for: "account-name" }, t("accounts.name")),
    h("div", { class: "row" }, name, h("button", { type: "submit", class: "primary" }, t("accounts.add_button"))),
    status,
  );
  const pairingHost = h("div");
  clear(
    view,
    h("h1", {}, t("nav.accounts")),
    pairingHost,
    addForm,
    h("h2", {}, t("accounts.yours")),
    list,
  );

  addForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "";
    const wanted = name.value.trim() || "WhatsApp";
    try {
      const session = await api("/api/v1/sessions", { method: "POST", body: { name: wanted } });
      name.value = "";
      await load();
      openPairing(session);
    } catch (err) {
      status.textContent = err.message;
    }
  });

  function openPairing(session) {
    pairing?.close();
    pairing = pairingPanel(session, () => {
      pairing = null;
      load();
    });
    clear(pairingHost, pairing.el);
    pairing.focus();
  }

  async function act(session, action) {
    status.textContent = "";
    try {
      if (action === "remove") {
        if (!confirm(t("accounts.confirm_remove", { name: session.name }))) return;
        await api(`/api/v1/sessions/${session.id}`, { method: "DELETE" });
        if (pairing?.sessionId === session.id) pairing.close();
      } else if (action === "logout") {
        if (!confirm(t("accounts.confirm_logout", { name: session.name }))) return;
        await api(`/api/v1/sessions/${session.id}/logout`, { method: "POST" });
      } else {
        const updated = await api(`/api/v1/sessions/${session.id}/${action}`, { method: "POST" });
        if (action === "start" && updated.state !== "connected" && !updated.jid) openPairing(updated);
      }
    } catch (err) {
      status.textContent = err.message;
    }
    await load();
  }

  function card(session) {
    const memory = session.worker?.pss_bytes ?? session.worker?.rss_bytes;
    const running = session.desired_state !== "stopped";
    const linking = ["qr_required", "pairing", "starting"].includes(session.state) && !session.jid;
    return h(
      "li",
      { class: "account card", dataset: { sessionId: session.id } },
      h(
        "div",
        { class: "account-head" },
        h("h3", {}, session.name),
        stateBadge(session),
      ),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, t("accounts.phone")),
        h("dd", { class: "phone" }, session.phone ? `+${session.phone.replace(/^\+/, "")}` : "—"),
        h("dt", {}, t("accounts.memory")),
        h("dd", { class: "memory" }, memory ? formatBytes(memory) : "—"),
        session.channel === "cloud" ? [h("dt", {}, t("accounts.channel")), h("dd", {}, "Cloud API")] : null,
      ),
      h(
        "div",
        { class: "actions" },
        linking && !pairing
          ? h("button", { type: "button", class: "primary", onclick: () => openPairing(session) }, t("accounts.show_qr"))
          : null,
        running
          ? h("button", { type: "button", onclick: () => act(session, "stop") }, t("accounts.stop"))
          : h("button", { type: "button", onclick: () => act(session, "start") }, t("accounts.start")),
        session.jid
          ? h("button", { type: "button", onclick: () => act(session, "logout") }, t("accounts.logout"))
          : null,
        h("button", { type: "button", class: "danger", onclick: () => act(session, "remove") }, t("accounts.remove")),
      ),
    );
  }

  async function load() {
    try {
      sessions = (await api("/api/v1/sessions")).items;
    } catch (err) {
      status.textContent = err.message;
      return;
    }
    clear(list, sessions.length ? sessions.map(card) : h("li", { class: "muted" }, t("accounts.none")));
  }

  const offState = realtime.on("session-state", (data) => {
    if (data.next_attempt_at) nextAttempt.set(data.session_id, data.next_attempt_at);
    pairing?.onState(data);
    load();
  });
  const offQr = realtime.on("qr-code", (data) => pairing?.onQr(data));
  const offBack = realtime.on("reconnected", () => load());
  const poll = setInterval(load, 5000); // worker memory moves without events
  await load();
  return () => {
    offState();
    offQr();
    offBack();
    clearInterval(poll);
    pairing?.close();
  };
}

// The pairing panel: a large QR replaced on every rotation, its countdown, "try again" once
// the pairing window closed, and linking by phone number instead.
function pairingPanel(session, onClosed) {
  const sessionId = session.id;
  let expiresAt = null;
  let expired = false;
  let closed = false;
  const img = h("img", { class: "qr", id: "qr-image", alt: t("pair.qr_alt", { name: session.name }), hidden: true });
  const waiting = h("p", { class: "muted", id: "qr-waiting" }, t("pair.waiting"));
  const countdown = h("p", { class: "countdown", id: "qr-countdown", "aria-live": "off" });
  const retry = h("button", { type: "button", class: "primary", id: "qr-retry", hidden: true, onclick: tryAgain }, t("pair.retry"));
  const expiredNote = h("p", { class: "form-error", role: "alert", id: "qr-expired" });
  const code = h("output", { class: "pair-code", id: "pair-code", "aria-live": "polite" });
  const phone = h("input", { id: "pair-phone", type: "tel", inputmode: "tel", autocomplete: "tel", placeholder: "+5215512345678" });
  const phoneError = h("p", { class: "form-error", role: "alert" });
  const phoneForm = h(
    "form",
    { class: "pair-phone", hidden: true },
    h("label", { for: "pair-phone" }, t("pair.phone_label")),
    h("div", { class: "row" }, phone, h("button", { type: "submit" }, t("pair.get_code"))),
    phoneError,
    code,
    h("p", { class: "muted" }, t("pair.code_help")),
  );
  const toggle = h(
    "button",
    { type: "button", class: "link", "aria-expanded": "false", onclick: () => {
      phoneForm.hidden = !phoneForm.hidden;
      toggle.setAttribute("aria-expanded", String(!phoneForm.hidden));
      if (!phoneForm.hidden) phone.focus();
    } },
    t("pair.by_phone"),
  );
  const title = h("h2", { id: "pair-title", tabindex: "-1" }, t("pair.title", { name: session.name }));
  const el = h(
    "section",
    { class: "pairing card", "aria-labelledby": "pair-title", dataset: { sessionId } },
    h("div", { class: "pair-head" }, title, h("button", { type: "button", onclick: close, "aria-label": t("pair.close") }, "✕")),
    h("ol", { class: "steps" }, h("li", {}, t("pair.step1")), h("li", {}, t("pair.step2")), h("li", {}, t("pair.step3"))),
    h("div", { class: "qr-box" }, waiting, img, countdown, expiredNote, retry),
    toggle,
    phoneForm,
  );

  phoneForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    phoneError.textContent = "";
    code.textContent = "";
    try {
      const got = await api(`/api/v1/sessions/${sessionId}/pair-phone`, { method: "POST", body: { phone: phone.value.trim() } });
      code.textContent = got.code.length === 8 ? `${got.code.slice(0, 4)}-${got.code.slice(4)}` : got.code;
    } catch (err) {
      phoneError.textContent = err.message;
    }
  });

  function showQr(qr, expires) {
    if (closed) return;
    expired = false;
    expiredNote.textContent = "";
    retry.hidden = true;
    waiting.hidden = true;
    img.hidden = false;
    img.src = qr;
    expiresAt = new Date(expires);
    el.dataset.qrShownAt = String(Date.now());
    tick();
  }

  function showExpired() {
    expired = true;
    img.hidden = true;
    waiting.hidden = true;
    countdown.textContent = "";
    expiredNote.textContent = t("pair.expired");
    retry.hidden = false;
  }

  function tick() {
    if (closed || expired || !expiresAt) return;
    const left = Math.max(0, Math.round((expiresAt - Date.now()) / 1000));
    countdown.textContent = t("pair.expires_in", { seconds: left });
  }

  async function fetchQr() {
    if (closed || expired) return;
    try {
      const got = await api(`/api/v1/sessions/${sessionId}/qr`);
      if (img.src !== got.qr) showQr(got.qr, got.expires_at);
    } catch (err) {
      if (err instanceof ApiError && err.code === "already_connected") done();
      else if (err instanceof ApiError && err.status === 404) close();
      // qr_unavailable: starting, or the window closed (session-state says which)
    }
  }

  async function tryAgain() {
    retry.disabled = true;
    try {
      await api(`/api/v1/sessions/${sessionId}/start`, { method: "POST" });
      expired = false;
      expiredNote.textContent = "";
      retry.hidden = true;
      waiting.hidden = false;
      realtime.askQr(sessionId);
      fetchQr();
    } catch (err) {
      expiredNote.textContent = err.message;
    } finally {
      retry.disabled = false;
    }
  }

  function done() {
    clear(el, h("p", { class: "success", role: "status" }, t("pair.linked", { name: session.name })));
    closed = true;
    clearInterval(timer);
    setTimeout(() => {
      el.remove();
      onClosed();
    }, 2500);
  }

  function close() {
    if (closed && !el.isConnected) return;
    closed = true;
    clearInterval(timer);
    el.remove();
    onClosed();
  }

  // The socket pushes every rotation; polling covers a socket that is down.
  const timer = setInterval(() => {
    tick();
    if (expiresAt && Date.now() > expiresAt.getTime() + 1500) fetchQr();
  }, 1000);
  const poll = setInterval(() => (closed ? clearInterval(poll) : fetchQr()), 4000);
  realtime.askQr(sessionId);
  fetchQr();

  return {
    el,
    sessionId,
    focus: () => title.focus(),
    close,
    onQr(data) {
      if ((data.sessionId ?? data.session_id) === sessionId) showQr(data.qr, data.expires_at);
    },
    onState(data) {
      if (data.session_id !== sessionId || closed) return;
      if (data.state === "connected") done();
      else if (data.state === "qr_expired") showExpired();
    },
  };
}
