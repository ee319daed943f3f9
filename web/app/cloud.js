// Cloud API numbers (Settings): add one (its ids and secrets from Meta's app dashboard), see
// the webhook address to give Meta, check the token, replace an expired token, see the
// number's message templates and their review status, remove it. Secrets are never shown.

import { actionsReportingTo, api } from "./api.js";
import { stateBadge } from "./accounts.js";
import { clear, field, h } from "./dom.js";
import { t } from "./i18n.js";

export function renderCloud(section) {
  const status = h("p", { class: "form-error", role: "alert" });
  const list = h("ul", { class: "cloud-numbers" });
  const webhookUrl = `${location.origin}/api/whatsapp/webhook`;
  let stopped = false;
  // What the list shows across its re-renders: the latest check or token note of a number,
  // and which numbers have the token form open.
  const notes = new Map();
  const tokenFormOpen = new Set();

  const act = actionsReportingTo(status);

  // -- adding a number -----------------------------------------------------------------------
  const name = h("input", { type: "text", required: true, maxlength: 100 });
  const phoneNumberId = h("input", { type: "text", required: true, inputmode: "numeric", pattern: "\\d+", maxlength: 64 });
  const wabaId = h("input", { type: "text", inputmode: "numeric", pattern: "\\d+", maxlength: 64 });
  const accessToken = h("input", { type: "password", required: true, autocomplete: "off", maxlength: 4096 });
  const appSecret = h("input", { type: "password", required: true, autocomplete: "off", maxlength: 512 });
  const verifyToken = h("input", { type: "text", autocomplete: "off", maxlength: 512 });
  const coexistence = h("input", { type: "checkbox", id: "cloud-coexistence" });
  const addForm = h(
    "form",
    { class: "cloud-add-form", "aria-label": t("cloud.add") },
    field("cloud-name", t("cloud.name"), name),
    field("cloud-phone-id", t("cloud.phone_number_id"), phoneNumberId),
    field("cloud-waba-id", t("cloud.waba_id"), wabaId, t("cloud.waba_hint")),
    field("cloud-token", t("cloud.access_token"), accessToken),
    field("cloud-secret", t("cloud.app_secret"), appSecret),
    field("cloud-verify", t("cloud.verify_token"), verifyToken, t("cloud.verify_hint")),
    h("label", { class: "check", for: "cloud-coexistence" }, coexistence, h("span", {}, t("cloud.coexistence"))),
    h("button", { type: "submit", class: "primary" }, t("cloud.add")),
  );
  addForm.addEventListener("submit", (event) => {
    event.preventDefault();
    act(async () => {
      await api("/api/v1/sessions", {
        method: "POST",
        body: {
          name: name.value.trim(),
          channel: "cloud",
          phone_number_id: phoneNumberId.value.trim(),
          waba_id: wabaId.value.trim() || null,
          access_token: accessToken.value.trim(),
          app_secret: appSecret.value.trim(),
          verify_token: verifyToken.value.trim() || null,
          coexistence: coexistence.checked,
        },
      });
      addForm.reset();
      await load();
    });
  });

  // -- one number ----------------------------------------------------------------------------
  function item(session) {
    const result = h("p", { class: "cloud-check", role: "status" });
    const extra = h("div", { class: "cloud-extra" });
    const number = session.cloud || {};

    function replaceToken() {
      tokenFormOpen.add(session.id);
      const token = h("input", { type: "password", required: true, autocomplete: "off", maxlength: 4096 });
      const form = h(
        "form",
        { class: "cloud-token-form", "aria-label": t("cloud.replace_token") },
        field(`cloud-new-token-${session.id}`, t("cloud.new_token"), token),
        h("button", { type: "submit" }, t("cloud.save_token")),
        h("button", {
          type: "button",
          class: "link",
          onclick: () => {
            tokenFormOpen.delete(session.id);
            clear(extra);
          },
        }, t("ai.cancel")),
      );
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        act(async () => {
          // Checked by the gateway against Meta at once (the state follows its answer);
          // what waited for a working token is sent then.
          const updated = await api(`/api/v1/sessions/${session.id}`, {
            method: "PATCH",
            body: { access_token: token.value.trim() },
          });
          const works = updated.state === "connected";
          notes.set(session.id, {
            ok: works,
            text: works
              ? t("cloud.token_saved")
              : t("cloud.token_saved_refused", { message: updated.last_error || updated.state }),
          });
          // Refused: the form stays open, the next try is one paste away.
          if (works) tokenFormOpen.delete(session.id);
          await load();
        });
      });
      clear(extra, form);
      token.focus();
    }

    const note = notes.get(session.id);
    if (note) {
      result.textContent = note.text;
      result.className = `cloud-check ${note.ok ? "ok" : "bad"}`;
    }

    async function showTemplates() {
      clear(extra, h("p", { class: "muted" }, t("cloud.loading")));
      const found = await api(`/api/v1/sessions/${session.id}/templates`);
      clear(
        extra,
        found.error ? h("p", { class: "form-error" }, t("cloud.sync_failed", { error: found.error })) : null,
        found.items.length
          ? h(
              "table",
              { class: "cloud-templates" },
              h(
                "thead",
                {},
                h("tr", {}, h("th", {}, t("cloud.template")), h("th", {}, t("cloud.language")),
                  h("th", {}, t("cloud.category")), h("th", {}, t("cloud.status"))),
              ),
              h(
                "tbody",
                {},
                found.items.map((tpl) =>
                  h(
                    "tr",
                    { dataset: { template: tpl.name } },
                    h("td", {}, tpl.name),
                    h("td", {}, tpl.language),
                    h("td", {}, tpl.category || ""),
                    h(
                      "td",
                      {},
                      h("span", { class: `badge tone-${tpl.status === "APPROVED" ? "ok" : tpl.status === "PENDING" ? "wait" : "bad"}` }, tpl.status),
                      tpl.rejected_reason && tpl.rejected_reason !== "NONE" ? ` ${tpl.rejected_reason}` : "",
                    ),
                  ),
                ),
              ),
            )
          : h("p", { class: "muted" }, t("cloud.no_templates")),
      );
    }

    const el = h(
      "li",
      { class: "cloud-number card", dataset: { sessionId: session.id } },
      h("div", { class: "account-head" }, h("h3", {}, session.name), stateBadge(session)),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, t("cloud.phone_number_id")),
        h("dd", {}, number.phone_number_id || "—"),
        h("dt", {}, t("cloud.waba_id")),
        h("dd", {}, number.waba_id || "—"),
        session.phone ? [h("dt", {}, t("accounts.phone")), h("dd", {}, `+${session.phone.replace(/^\+/, "")}`)] : null,
        h("dt", {}, t("cloud.coexistence_short")),
        h("dd", {}, number.coexistence ? t("cloud.yes") : t("cloud.no")),
      ),
      session.last_error ? h("p", { class: "form-error cloud-error" }, session.last_error) : null,
      result,
      h(
        "div",
        { class: "actions" },
        h(
          "button",
          {
            type: "button",
            onclick: () =>
              act(async () => {
                result.textContent = t("cloud.checking");
                const check = await api(`/api/v1/sessions/${session.id}/test`, { method: "POST" });
                notes.set(session.id, {
                  ok: check.ok,
                  text: t(check.ok ? "cloud.token_ok" : "cloud.token_bad", { message: check.message }),
                });
                await load(); // the state follows the check
              }),
          },
          t("cloud.check"),
        ),
        h("button", { type: "button", onclick: replaceToken }, t("cloud.replace_token")),
        number.waba_id ? h("button", { type: "button", onclick: () => act(showTemplates) }, t("cloud.templates")) : null,
        h(
          "button",
          {
            type: "button",
            class: "danger",
            onclick: () =>
              act(async () => {
                if (!confirm(t("accounts.confirm_remove", { name: session.name }))) return;
                await api(`/api/v1/sessions/${session.id}`, { method: "DELETE" });
                await load();
              }),
          },
          t("accounts.remove"),
        ),
      ),
      extra,
    );
    if (tokenFormOpen.has(session.id)) replaceToken();
    return el;
  }

  async function load() {
    const { items } = await api("/api/v1/sessions");
    if (stopped) return;
    const numbers = items.filter((s) => s.channel === "cloud");
    clear(list, numbers.length ? numbers.map(item) : h("li", { class: "muted" }, t("cloud.none")));
  }

  clear(
    section,
    h("h2", { id: "settings-cloud" }, t("settings.cloud")),
    h("p", { class: "muted" }, t("settings.cloud_text")),
    h(
      "p",
      { class: "cloud-webhook" },
      t("cloud.webhook_is"),
      " ",
      h("code", { class: "cloud-webhook-url" }, webhookUrl),
    ),
    status,
    list,
    h("h3", {}, t("cloud.add")),
    addForm,
  );
  act(load);
  return () => {
    stopped = true;
  };
}
