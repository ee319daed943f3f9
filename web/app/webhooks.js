// Webhooks (Settings): add an endpoint, see its state and recent deliveries, send a test event,
// pause, resume, replay, remove. The signing secret is shown once, right after adding.

import { ApiError, api } from "./api.js";
import { clear, h } from "./dom.js";
import { formatDateTime, t } from "./i18n.js";

const EVENTS = [
  "message-new",
  "message-status",
  "message-updated",
  "session-state",
  "conversation-updated",
  "history-progress",
  "error",
];
const REFRESH_MS = 3000;

function stateBadge(hook) {
  let tone = { active: "ok", failing: "bad", disabled: "idle" }[hook.state] || "idle";
  let text = t(`webhooks.state.${hook.state}`, {}, hook.state);
  if (hook.state === "active" && hook.attempts > 0) {
    tone = "warn";
    text = t("webhooks.retrying", { n: hook.attempts });
  }
  return h("span", { class: `badge tone-${tone}`, dataset: { state: hook.state } }, text);
}

function deliveriesTable(items) {
  if (!items.length) return h("p", { class: "muted" }, t("webhooks.no_deliveries"));
  return h(
    "table",
    { class: "deliveries" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["when", "event", "seq", "status", "latency", "attempt"].map((c) =>
          h("th", { scope: "col" }, t(`webhooks.col.${c}`)),
        ),
      ),
    ),
    h(
      "tbody",
      {},
      items.map((d) =>
        h(
          "tr",
          { class: d.delivered ? "delivery ok" : "delivery failed", title: d.error || d.delivery_id },
          h("td", {}, formatDateTime(d.created_at)),
          h("td", {}, d.event),
          h("td", {}, d.seq ?? "–"),
          h("td", { class: "status" }, d.status_code ?? (d.error || "–")),
          h("td", {}, d.latency_ms === null ? "–" : `${d.latency_ms} ms`),
          h("td", {}, d.attempt),
        ),
      ),
    ),
  );
}

export function renderWebhooks(section) {
  const status = h("p", { class: "form-error", role: "alert" });
  const secretBox = h("div", { class: "secret-once", hidden: true, role: "status" });
  const list = h("ul", { class: "webhooks", "aria-label": t("webhooks.list") });
  const url = h("input", {
    id: "webhook-url", name: "url", type: "url", required: true, maxlength: 2048,
    placeholder: "https://example.com/wagate",
  });
  const all = h("input", { type: "checkbox", id: "webhook-all", checked: true });
  const boxes = EVENTS.map((name) =>
    h("input", { type: "checkbox", value: name, id: `webhook-ev-${name}`, disabled: true }),
  );
  all.addEventListener("change", () => {
    for (const box of boxes) box.disabled = all.checked;
  });
  const add = h("button", { type: "submit", class: "primary" }, t("webhooks.add"));
  const form = h(
    "form",
    { class: "webhook-form", "aria-label": t("webhooks.add") },
    h("label", { for: "webhook-url" }, t("webhooks.url")),
    url,
    h(
      "fieldset",
      { class: "webhook-events" },
      h("legend", {}, t("webhooks.events")),
      h("label", { for: "webhook-all" }, all, " ", t("webhooks.all_events")),
      EVENTS.map((name, i) => h("label", { for: `webhook-ev-${name}` }, boxes[i], " ", name)),
    ),
    add,
  );
  let hooks = [];
  const deliveries = new Map();
  let stopped = false;

  async function act(fn) {
    status.textContent = "";
    try {
      await fn();
    } catch (err) {
      status.textContent = err instanceof ApiError ? err.message : String(err);
    }
    await refresh();
  }

  function item(hook) {
    const from = h("input", {
      type: "number", min: 1, class: "replay-from", "aria-label": t("webhooks.replay_from"),
      value: hook.last_seq + 1,
    });
    const behind = hook.latest_seq - hook.last_seq;
    return h(
      "li",
      { class: "webhook card", dataset: { id: hook.id } },
      h(
        "div",
        { class: "webhook-head" },
        h("strong", { class: "webhook-url" }, hook.url),
        " ",
        stateBadge(hook),
      ),
      h(
        "p",
        { class: "muted" },
        t("webhooks.filter", { events: hook.events.join(", ") }),
        " · ",
        t("webhooks.progress", { last: hook.last_seq, latest: hook.latest_seq }),
        behind > 0 ? ` (${t("webhooks.behind", { n: behind })})` : "",
      ),
      hook.last_error && hook.state !== "active"
        ? h("p", { class: "form-error" }, hook.last_error)
        : hook.last_error && hook.attempts > 0
          ? h("p", { class: "muted" }, hook.last_error)
          : null,
      h(
        "div",
        { class: "actions" },
        h(
          "button",
          {
            type: "button",
            onclick: () =>
              act(() => api(`/api/v1/webhooks/${hook.id}/test`, { method: "POST" })),
          },
          t("webhooks.test"),
        ),
        h(
          "button",
          {
            type: "button",
            onclick: () =>
              act(() =>
                api(`/api/v1/webhooks/${hook.id}`, {
                  method: "PATCH",
                  body: { enabled: hook.state !== "active" },
                }),
              ),
          },
          hook.state === "active" ? t("webhooks.disable") : t("webhooks.enable"),
        ),
        h(
          "button",
          {
            type: "button",
            onclick: () =>
              act(() =>
                api(`/api/v1/webhooks/${hook.id}/replay`, {
                  method: "POST",
                  query: { from_seq: from.value },
                }),
              ),
          },
          t("webhooks.replay"),
        ),
        from,
        h(
          "button",
          {
            type: "button",
            class: "danger",
            onclick: () => {
              if (!confirm(t("webhooks.confirm_remove", { url: hook.url }))) return;
              act(() => api(`/api/v1/webhooks/${hook.id}`, { method: "DELETE" }));
            },
          },
          t("webhooks.remove"),
        ),
      ),
      h(
        "details",
        { class: "recent", open: true },
        h("summary", {}, t("webhooks.recent")),
        deliveriesTable(deliveries.get(hook.id) || []),
      ),
    );
  }

  function draw() {
    clear(
      list,
      hooks.length ? hooks.map(item) : h("li", { class: "muted empty" }, t("webhooks.none")),
    );
  }

  async function refresh() {
    if (stopped) return;
    try {
      hooks = (await api("/api/v1/webhooks")).items;
      await Promise.all(
        hooks.map(async (hook) => {
          const got = await api(`/api/v1/webhooks/${hook.id}/deliveries`, {
            query: { limit: 10 },
          });
          deliveries.set(hook.id, got.items);
        }),
      );
    } catch (err) {
      status.textContent = err instanceof ApiError ? err.message : String(err);
      return;
    }
    const typing = list.contains(document.activeElement) && document.activeElement.tagName === "INPUT";
    if (!stopped && !typing) draw();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "";
    const events = all.checked ? ["*"] : boxes.filter((b) => b.checked).map((b) => b.value);
    if (!url.value.trim() || !events.length) {
      status.textContent = t("webhooks.missing");
      return;
    }
    add.disabled = true;
    try {
      const created = await api("/api/v1/webhooks", {
        method: "POST",
        body: { url: url.value.trim(), events },
      });
      url.value = "";
      clear(
        secretBox,
        h("p", {}, t("webhooks.secret_once")),
        h("code", { class: "secret" }, created.secret),
      );
      secretBox.hidden = false;
    } catch (err) {
      status.textContent = err instanceof ApiError ? err.message : String(err);
    } finally {
      add.disabled = false;
    }
    await refresh();
  });

  clear(
    section,
    h("h2", { id: "settings-webhooks" }, t("settings.webhooks")),
    h("p", { class: "muted" }, t("settings.webhooks_text")),
    form,
    status,
    secretBox,
    list,
  );
  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
