// The Jira bridge (Settings): the site and its credentials (Cloud: e-mail + API token;
// Server/Data Center: personal access token), project and issue type, the webhook secret, which
// chats are bridged, what a message to a resolved ticket does, status notices; a Test button, the
// bridge's state from GET /api/v1/jira/status ("credentials rejected" after a 401/403), and the
// webhook URL to paste into Jira. Secrets are never shown back: only whether one is set.

import { ApiError, api } from "./api.js";
import { clear, field, h } from "./dom.js";
import { t } from "./i18n.js";

const REFRESH_MS = 5000;

function check(id, label, checked) {
  const box = h("input", { type: "checkbox", id, checked: Boolean(checked) });
  return [box, h("label", { class: "check", for: id }, box, h("span", {}, label))];
}

function stateBadge(status) {
  const tone = !status.configured
    ? "idle"
    : status.state === "rejected"
      ? "bad"
      : !status.enabled
        ? "idle"
        : status.last_error || status.jobs_failed
          ? "warn"
          : "ok";
  const text = !status.configured
    ? t("jira.state.unconfigured")
    : status.state === "rejected"
      ? t("jira.state.rejected")
      : !status.enabled
        ? t("jira.state.off")
        : t("jira.state.active");
  return h("span", { class: `badge tone-${tone}`, id: "jira-state", dataset: { state: status.state } }, text);
}

export function renderJira(section) {
  const error = h("p", { class: "form-error", role: "alert" });
  const statusBox = h("div", { class: "jira-status", "aria-live": "polite" });
  const formBox = h("div", { class: "jira-connection" });
  const hookBox = h("div", { class: "jira-webhook" });
  clear(
    section,
    h("h2", { id: "settings-jira" }, t("settings.jira")),
    h("p", { class: "muted" }, t("settings.jira_text")),
    statusBox,
    error,
    formBox,
    hookBox,
  );
  let stopped = false;
  let timer = null;

  async function act(fn) {
    error.textContent = "";
    try {
      await fn();
    } catch (err) {
      error.textContent = err instanceof ApiError ? err.message : String(err);
    }
  }

  async function loadStatus() {
    const status = await api("/api/v1/jira/status");
    const facts = [];
    if (status.configured) {
      facts.push(t("jira.tickets", { open: status.tickets_open, total: status.tickets_total }));
      if (status.jobs_waiting) facts.push(t("jira.waiting", { n: status.jobs_waiting }));
      if (status.jobs_failed) facts.push(t("jira.failed", { n: status.jobs_failed }));
      if (status.account_name) facts.push(t("jira.as", { name: status.account_name }));
    }
    clear(
      statusBox,
      h("p", { class: "row wrap" }, stateBadge(status), " ", h("span", { class: "muted" }, facts.join(" · "))),
      status.state === "rejected"
        ? h("p", { class: "form-error", id: "jira-rejected" }, t("jira.rejected_help"))
        : null,
      status.configured && status.last_error && status.state !== "rejected"
        ? h("p", { class: "muted", id: "jira-last-error" }, `${t("jira.last_error")} ${status.last_error}`)
        : null,
    );
  }

  function renderHook(connection) {
    if (!connection) {
      clear(hookBox);
      return;
    }
    const url = new URL(connection.webhook_url, location.origin).href;
    const input = h("input", { type: "text", readonly: true, value: url, class: "mono" });
    const copy = h(
      "button",
      {
        type: "button",
        onclick: async () => {
          input.select();
          try {
            await navigator.clipboard.writeText(url);
            copy.textContent = t("jira.copied");
          } catch {
            document.execCommand?.("copy");
          }
        },
      },
      t("jira.copy"),
    );
    clear(
      hookBox,
      h("h3", {}, t("jira.webhook")),
      h("p", { class: "muted" }, t("jira.webhook_help")),
      h("div", { class: "row" }, field("jira-webhook-url", t("jira.webhook_url"), input), copy),
    );
  }

  async function loadConnection() {
    let connection = null;
    try {
      connection = await api("/api/v1/jira/connection");
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;
    }
    const { items: sessions } = await api("/api/v1/sessions");
    const c = connection || {
      base_url: "",
      auth_kind: "cloud",
      email: "",
      project_key: "",
      issue_type: "Task",
      enabled: true,
      auto_bridge_session_ids: [],
      reopen_resolved: false,
      status_notices: true,
      status_notice_text: null,
      language: "en",
    };
    const baseUrl = h("input", {
      type: "url", required: true, maxlength: 500, value: c.base_url,
      placeholder: "https://example.atlassian.net",
    });
    const kind = h(
      "select",
      { name: "auth_kind" },
      h("option", { value: "cloud", selected: c.auth_kind === "cloud" }, t("jira.auth.cloud")),
      h("option", { value: "pat", selected: c.auth_kind === "pat" }, t("jira.auth.pat")),
    );
    const email = h("input", { type: "email", maxlength: 320, value: c.email || "", autocomplete: "off" });
    const token = h("input", {
      type: "password",
      autocomplete: "off",
      placeholder: connection?.has_token ? t("jira.secret_set") : "",
    });
    const project = h("input", {
      type: "text", required: true, maxlength: 50, value: c.project_key, placeholder: "SUP",
    });
    const issueType = h("input", { type: "text", required: true, maxlength: 100, value: c.issue_type });
    const secret = h("input", {
      type: "password",
      autocomplete: "off",
      placeholder: connection?.has_webhook_secret ? t("jira.secret_set") : t("jira.secret_unset"),
    });
    const reopen = h(
      "select",
      { name: "reopen_resolved" },
      h("option", { value: "new", selected: !c.reopen_resolved }, t("jira.resolved.new")),
      h("option", { value: "reopen", selected: c.reopen_resolved }, t("jira.resolved.reopen")),
    );
    const language = h(
      "select",
      { name: "language" },
      ["en", "es", "pt"].map((l) => h("option", { value: l, selected: c.language === l }, t(`jira.lang.${l}`))),
    );
    const [enabled, enabledLabel] = check("jira-enabled", t("jira.enabled"), c.enabled);
    const [notices, noticesLabel] = check("jira-notices", t("jira.notices"), c.status_notices);
    const noticeText = h("input", {
      type: "text", maxlength: 500, value: c.status_notice_text || "",
      placeholder: t("jira.notice_text_placeholder"),
    });
    const rules = sessions.map((s) => {
      const [box, label] = check(
        `jira-auto-${s.id}`,
        t("jira.auto_rule", { name: s.name || `#${s.id}` }),
        c.auto_bridge_session_ids.includes(s.id),
      );
      box.value = String(s.id);
      return { box, label };
    });
    const emailField = field("jira-email", t("jira.email"), email);
    const tokenField = field("jira-token", t("jira.token.cloud"), token);
    const syncKind = () => {
      emailField.hidden = kind.value !== "cloud";
      tokenField.querySelector("label").textContent = t(`jira.token.${kind.value}`);
    };
    kind.addEventListener("change", syncKind);
    syncKind();
    const saved = h("p", { class: "muted", role: "status", id: "jira-saved" });
    const testResult = h("p", { role: "status", id: "jira-test-result" });
    const testButton = h("button", { type: "button", disabled: !connection }, t("jira.test"));
    const remove = connection
      ? h("button", { type: "button", class: "link danger" }, t("jira.disconnect"))
      : null;
    const form = h(
      "form",
      { class: "jira-form", "aria-label": t("jira.form") },
      field("jira-base-url", t("jira.base_url"), baseUrl),
      field("jira-auth-kind", t("jira.auth"), kind),
      emailField,
      tokenField,
      field("jira-project", t("jira.project"), project),
      field("jira-issue-type", t("jira.issue_type"), issueType),
      field("jira-secret", t("jira.secret"), secret, t("jira.secret_hint")),
      h(
        "fieldset",
        { class: "jira-rules" },
        h("legend", {}, t("jira.rules")),
        rules.length
          ? rules.map((r) => h("div", {}, r.label))
          : h("p", { class: "muted" }, t("jira.no_accounts")),
        h("p", { class: "muted hint" }, t("jira.rules_hint")),
      ),
      field("jira-reopen", t("jira.resolved"), reopen),
      h("div", { class: "field" }, noticesLabel),
      field("jira-notice-text", t("jira.notice_text"), noticeText),
      field("jira-language", t("jira.language"), language),
      h("div", { class: "field" }, enabledLabel),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, t("jira.save")), testButton, remove),
      saved,
      testResult,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      // Until this save answers, neither an earlier "Saved." nor an earlier test result stands.
      saved.textContent = "";
      testResult.textContent = "";
      act(async () => {
        const body = {
          base_url: baseUrl.value.trim(),
          auth_kind: kind.value,
          email: kind.value === "cloud" ? email.value.trim() || null : null,
          project_key: project.value.trim(),
          issue_type: issueType.value.trim() || "Task",
          enabled: enabled.checked,
          auto_bridge_session_ids: rules.filter((r) => r.box.checked).map((r) => Number(r.box.value)),
          reopen_resolved: reopen.value === "reopen",
          status_notices: notices.checked,
          status_notice_text: noticeText.value.trim() || null,
          language: language.value,
        };
        if (token.value) body.token = token.value;
        if (secret.value) body.webhook_secret = secret.value;
        await api("/api/v1/jira/connection", { method: "PUT", body });
        await Promise.all([loadConnection(), loadStatus()]);
        formBox.querySelector("#jira-saved").textContent = t("jira.saved");
      });
    });
    testButton.addEventListener("click", () =>
      act(async () => {
        testButton.disabled = true;
        testResult.className = "muted";
        testResult.textContent = t("jira.testing");
        try {
          const got = await api("/api/v1/jira/test", { method: "POST" });
          testResult.dataset.ok = String(got.ok);
          testResult.className = got.ok ? "badge tone-ok" : "form-error";
          testResult.textContent = got.ok
            ? t("jira.test_ok", {
                server: got.server_title || got.deployment || "Jira",
                version: got.version || "?",
                name: got.account_name || got.account_id || "?",
              })
            : got.kind === "rejected"
              ? `${t("jira.state.rejected")}: ${got.error}`
              : `${t("jira.test_failed")} ${got.error}`;
        } finally {
          testButton.disabled = false;
          await loadStatus();
        }
      }),
    );
    remove?.addEventListener("click", () =>
      act(async () => {
        if (!window.confirm(t("jira.confirm_disconnect"))) return;
        await api("/api/v1/jira/connection", { method: "DELETE" });
        await Promise.all([loadConnection(), loadStatus()]);
      }),
    );
    clear(formBox, form);
    renderHook(connection);
  }

  async function poll() {
    if (stopped) return;
    try {
      await loadStatus();
    } catch {
      // the next round tries again
    }
    if (!stopped) timer = setTimeout(poll, REFRESH_MS);
  }

  act(async () => {
    await Promise.all([loadConnection(), loadStatus()]);
    timer = setTimeout(poll, REFRESH_MS);
  });
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
