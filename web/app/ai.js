// The AI responder (Settings): the provider (knowledge base only, or an OpenAI-compatible model
// with its URL, model, key, timeout and history), the handoff message, each account's defaults,
// personalities, and the knowledge-base articles it answers from (search, pages, edit, and a
// "try a question" box that shows what the AI would pick). The API key is never shown back.

import { actionsReportingTo, api } from "./api.js";
import { clear, field, h } from "./dom.js";
import { t } from "./i18n.js";

const LANGS = ["en", "es", "pt"];
const PAGE = 50;

function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)),
  );
}

// "" → null (the gateway's default), else the number.
function numberOrNull(input) {
  return input.value.trim() === "" ? null : Number(input.value);
}

export function renderAi(section) {
  const status = h("p", { class: "form-error", role: "alert" });
  const providerBox = h("div", { class: "ai-provider" });
  const accountsBox = h("div", { class: "ai-accounts" });
  const personasBox = h("div", { class: "ai-personalities" });
  const articlesBox = h("div", { class: "kb-articles" });
  const tryBox = h("div", { class: "kb-try" });
  let personalities = [];
  clear(
    section,
    h("h2", { id: "settings-ai" }, t("settings.ai")),
    h("p", { class: "muted" }, t("settings.ai_text")),
    status,
    providerBox,
    h("h3", {}, t("ai.accounts")),
    accountsBox,
    h("h3", {}, t("ai.personalities")),
    personasBox,
    h("h3", {}, t("ai.kb")),
    tryBox,
    articlesBox,
  );

  const act = actionsReportingTo(status);

  // -- provider ----------------------------------------------------------------------------
  async function loadProvider() {
    const current = await api("/api/v1/ai/settings");
    const saved = h("p", { class: "muted", role: "status" });
    const provider = select(
      "provider",
      [
        ["kb", t("ai.provider_kb")],
        ["openai", t("ai.provider_openai")],
      ],
      current.provider,
    );
    const baseUrl = h("input", { type: "url", value: current.base_url, maxlength: 2048 });
    const model = h("input", { type: "text", value: current.model, maxlength: 200 });
    const key = h("input", {
      type: "password",
      autocomplete: "off",
      placeholder: current.api_key_set ? t("ai.key_set") : t("ai.key_unset"),
    });
    const timeout = h("input", {
      type: "number", min: 1, max: 300, step: 1, value: current.timeout_seconds,
    });
    const history = h("input", {
      type: "number", min: 0, max: 100, step: 1, value: current.history_messages,
    });
    const threshold = h("input", {
      type: "number", min: 0, max: 1, step: 0.05, value: current.kb_threshold,
    });
    const pause = h("input", {
      type: "number", min: 0, step: 1, value: current.operator_pause_minutes,
    });
    const ownHandoff = current.overridden.includes("handoff_message");
    const handoff = h("textarea", {
      rows: 2,
      maxlength: 1000,
      placeholder: (!ownHandoff && current.handoff_message) || t("ai.handoff_default"),
    });
    handoff.value = ownHandoff ? current.handoff_message || "" : "";
    const modelFields = h(
      "div",
      { class: "ai-model-fields", hidden: current.provider !== "openai" },
      field("ai-base-url", t("ai.base_url"), baseUrl),
      field("ai-model", t("ai.model"), model),
      field("ai-key", t("ai.api_key"), key),
      field("ai-timeout", t("ai.timeout"), timeout),
      field("ai-history", t("ai.history"), history),
    );
    provider.addEventListener("change", () => {
      modelFields.hidden = provider.value !== "openai";
    });
    const form = h(
      "form",
      { class: "ai-settings-form", "aria-label": t("ai.save") },
      field("ai-provider", t("ai.provider"), provider),
      modelFields,
      field("ai-threshold", t("ai.threshold"), threshold),
      field("ai-pause", t("ai.pause"), pause),
      field("ai-handoff", t("ai.handoff"), handoff),
      h("button", { type: "submit", class: "primary" }, t("ai.save")),
      saved,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      act(async () => {
        const body = {
          provider: provider.value,
          kb_threshold: Number(threshold.value),
          operator_pause_minutes: Number(pause.value),
          handoff_message: handoff.value.trim() || null,
        };
        if (provider.value === "openai") {
          body.base_url = baseUrl.value;
          body.model = model.value;
          body.timeout_seconds = numberOrNull(timeout);
          body.history_messages = numberOrNull(history);
          if (key.value) body.api_key = key.value;
        }
        await api("/api/v1/ai/settings", { method: "PATCH", body });
        await loadProvider();
        providerBox.querySelector("[role=status]").textContent = t("ai.saved");
      });
    });
    clear(providerBox, form);
  }

  // -- each account's defaults -------------------------------------------------------------
  function personalityPicker(value, emptyLabel) {
    return select(
      "personality",
      [["", emptyLabel], ...personalities.map((p) => [String(p.id), p.name])],
      value === null || value === undefined ? "" : String(value),
    );
  }

  async function loadAccounts() {
    const { items } = await api("/api/v1/sessions");
    if (!items.length) {
      clear(accountsBox, h("p", { class: "muted" }, t("ai.no_accounts")));
      return;
    }
    const rows = await Promise.all(
      items.map(async (session) => {
        const defaults = await api(`/api/v1/sessions/${session.id}/ai`);
        const id = `ai-default-${session.id}`;
        const on = h("input", { type: "checkbox", role: "switch", id, checked: defaults.ai_default });
        const persona = personalityPicker(defaults.personality_id, t("ai.no_personality"));
        persona.setAttribute("aria-label", t("ai.account_personality", { name: session.name }));
        const save = (body) =>
          act(async () => {
            await api(`/api/v1/sessions/${session.id}/ai`, { method: "PATCH", body });
          });
        on.addEventListener("change", () => save({ ai_default: on.checked }));
        persona.addEventListener("change", () =>
          save({ personality_id: persona.value ? Number(persona.value) : null }),
        );
        return h(
          "li",
          { class: "ai-account", dataset: { sessionId: session.id } },
          h("strong", {}, session.name),
          h("label", { class: "switch", for: id }, on, h("span", {}, t("ai.account_default"))),
          persona,
        );
      }),
    );
    clear(accountsBox, h("ul", { class: "ai-account-list" }, rows));
  }

  // -- personalities -----------------------------------------------------------------------
  async function loadPersonas() {
    personalities = (await api("/api/v1/personalities")).items;
    let editing = null; // the personality the form changes, or null: a new one
    const name = h("input", { type: "text", required: true, maxlength: 100 });
    const instructions = h("textarea", { rows: 3, maxlength: 8000 });
    const language = select("language", [["", t("ai.any_language")], ...LANGS.map((l) => [l, l])], "");
    const tone = h("input", { type: "text", maxlength: 200 });
    const maxChars = h("input", { type: "number", min: 50, max: 4096, step: 1, placeholder: t("ai.max_chars_default") });
    const submit = h("button", { type: "submit" }, t("ai.add_personality"));
    const cancel = h("button", { type: "button", class: "link", hidden: true }, t("ai.cancel"));
    const form = h(
      "form",
      { class: "ai-personality-form", "aria-label": t("ai.add_personality") },
      field("ai-p-name", t("ai.name"), name),
      field("ai-p-instructions", t("ai.instructions"), instructions),
      field("ai-p-language", t("ai.language"), language),
      field("ai-p-tone", t("ai.tone"), tone),
      field("ai-p-max", t("ai.max_chars"), maxChars),
      submit,
      cancel,
    );
    function edit(p) {
      editing = p;
      name.value = p?.name || "";
      instructions.value = p?.instructions || "";
      language.value = p?.language || "";
      tone.value = p?.tone || "";
      maxChars.value = p?.max_reply_chars ?? "";
      submit.textContent = p ? t("ai.save_personality") : t("ai.add_personality");
      form.setAttribute("aria-label", submit.textContent);
      cancel.hidden = !p;
      if (p) name.focus();
    }
    cancel.addEventListener("click", () => edit(null));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      act(async () => {
        const body = {
          name: name.value,
          instructions: instructions.value,
          language: language.value || null,
          tone: tone.value || null,
          max_reply_chars: numberOrNull(maxChars),
        };
        if (editing) {
          await api(`/api/v1/personalities/${editing.id}`, { method: "PATCH", body });
        } else {
          await api("/api/v1/personalities", { method: "POST", body });
        }
        await loadPersonas();
        await loadAccounts();
      });
    });
    clear(
      personasBox,
      personalities.length
        ? h(
            "ul",
            { class: "personalities" },
            personalities.map((p) =>
              h(
                "li",
                { class: "personality", dataset: { id: p.id } },
                h("strong", {}, p.name),
                " ",
                h(
                  "span",
                  { class: "muted" },
                  [p.language, p.tone, p.max_reply_chars ? t("ai.max_chars_n", { n: p.max_reply_chars }) : null]
                    .filter(Boolean)
                    .join(" · "),
                ),
                " ",
                h("button", { type: "button", class: "link", onclick: () => edit(p) }, t("ai.edit")),
                h(
                  "button",
                  {
                    type: "button",
                    class: "link",
                    onclick: () =>
                      act(async () => {
                        await api(`/api/v1/personalities/${p.id}`, { method: "DELETE" });
                        await loadPersonas();
                        await loadAccounts();
                      }),
                  },
                  t("ai.remove"),
                ),
              ),
            ),
          )
        : h("p", { class: "muted" }, t("ai.no_personalities")),
      form,
    );
  }

  // -- "try a question" --------------------------------------------------------------------
  function renderTry() {
    const question = h("input", { type: "search", maxlength: 500, placeholder: t("ai.try_hint") });
    const result = h("div", { class: "kb-try-result", role: "status" });
    const form = h(
      "form",
      { class: "kb-try-form", "aria-label": t("ai.try") },
      field("kb-try-q", t("ai.try"), question),
      h("button", { type: "submit" }, t("ai.try_button")),
      result,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!question.value.trim()) return;
      act(async () => {
        const found = await api("/api/v1/kb/search", { query: { q: question.value, limit: 3 } });
        const best = found.items[0];
        clear(
          result,
          best && best.score >= found.threshold
            ? h("p", { class: "kb-try-answer" }, t("ai.try_answers", { title: best.article.title }))
            : h("p", { class: "kb-try-handoff" }, t("ai.try_handoff")),
          found.items.length
            ? h(
                "ol",
                { class: "kb-try-hits" },
                found.items.map((hit) =>
                  h(
                    "li",
                    {},
                    hit.article.title,
                    " ",
                    h("span", { class: "muted" }, t("ai.try_score", {
                      score: hit.score.toFixed(2),
                      threshold: found.threshold.toFixed(2),
                    })),
                  ),
                ),
              )
            : null,
        );
      });
    });
    clear(tryBox, form);
  }

  // -- articles ----------------------------------------------------------------------------
  const filters = { q: "", language: "" };
  let editingArticle = null;
  const title = h("input", { type: "text", required: true, maxlength: 300 });
  const body = h("textarea", { rows: 4, required: true, maxlength: 20000 });
  const tags = h("input", { type: "text", placeholder: t("ai.tags_hint") });
  const language = select("language", LANGS.map((l) => [l, l]), t.lang?.slice(0, 2) || "en");
  const submitArticle = h("button", { type: "submit" }, t("ai.add_article"));
  const cancelArticle = h("button", { type: "button", class: "link", hidden: true }, t("ai.cancel"));
  const articleForm = h(
    "form",
    { class: "kb-article-form", "aria-label": t("ai.add_article") },
    field("kb-title", t("ai.title"), title),
    field("kb-body", t("ai.answer"), body),
    field("kb-tags", t("ai.tags"), tags),
    field("kb-language", t("ai.language"), language),
    submitArticle,
    cancelArticle,
  );
  function editArticle(a) {
    editingArticle = a;
    title.value = a?.title || "";
    body.value = a?.body || "";
    tags.value = a ? a.tags.join(", ") : "";
    if (a) language.value = a.language;
    submitArticle.textContent = a ? t("ai.save_article") : t("ai.add_article");
    articleForm.setAttribute("aria-label", submitArticle.textContent);
    cancelArticle.hidden = !a;
    if (a) title.focus();
  }
  cancelArticle.addEventListener("click", () => editArticle(null));
  articleForm.addEventListener("submit", (event) => {
    event.preventDefault();
    act(async () => {
      const payload = {
        title: title.value,
        body: body.value,
        tags: tags.value.split(",").map((s) => s.trim()).filter(Boolean),
        language: language.value,
      };
      if (editingArticle) {
        await api(`/api/v1/kb/articles/${editingArticle.id}`, { method: "PATCH", body: payload });
      } else {
        await api("/api/v1/kb/articles", { method: "POST", body: payload });
      }
      editArticle(null);
      await loadArticles();
    });
  });
  const search = h("input", { type: "search", maxlength: 200, placeholder: t("ai.search_articles") });
  search.setAttribute("aria-label", t("ai.search_articles"));
  const languageFilter = select("language", [["", t("ai.all_languages")], ...LANGS.map((l) => [l, l])], "");
  languageFilter.setAttribute("aria-label", t("ai.filter_language"));
  const filterForm = h("form", { class: "kb-filter", role: "search" }, search, languageFilter,
    h("button", { type: "submit" }, t("ai.search")));
  filterForm.addEventListener("submit", (event) => {
    event.preventDefault();
    filters.q = search.value.trim();
    filters.language = languageFilter.value;
    act(loadArticles);
  });
  languageFilter.addEventListener("change", () => {
    filters.language = languageFilter.value;
    act(loadArticles);
  });
  const list = h("ul", { class: "kb-list" });
  const empty = h("p", { class: "muted kb-empty" });
  const more = h("button", { type: "button", class: "kb-more", hidden: true }, t("ai.more_articles"));
  let nextAfter = null;
  more.addEventListener("click", () => act(() => loadArticles({ append: true })));

  function articleItem(a) {
    return h(
      "li",
      { class: "kb-article", dataset: { id: a.id } },
      h("strong", { class: "kb-title" }, a.title),
      " ",
      h("span", { class: "badge tone-idle" }, a.language),
      a.tags.length ? h("span", { class: "muted" }, ` ${a.tags.join(", ")}`) : null,
      h("p", { class: "kb-body" }, a.body),
      h("button", { type: "button", class: "link", onclick: () => editArticle(a) }, t("ai.edit")),
      h(
        "button",
        {
          type: "button",
          class: "link",
          onclick: () =>
            act(async () => {
              await api(`/api/v1/kb/articles/${a.id}`, { method: "DELETE" });
              if (editingArticle?.id === a.id) editArticle(null);
              await loadArticles();
            }),
        },
        t("ai.remove"),
      ),
    );
  }

  async function loadArticles({ append = false } = {}) {
    const page = await api("/api/v1/kb/articles", {
      query: {
        limit: PAGE,
        q: filters.q || undefined,
        language: filters.language || undefined,
        after: append ? nextAfter : undefined,
      },
    });
    if (append) {
      list.append(...page.items.map(articleItem));
    } else {
      clear(list, page.items.map(articleItem));
    }
    nextAfter = page.next_after;
    more.hidden = nextAfter === null;
    const filtered = filters.q || filters.language;
    empty.textContent = list.children.length ? "" : filtered ? t("ai.no_matches") : t("ai.no_articles");
    empty.hidden = list.children.length > 0;
  }
  clear(articlesBox, filterForm, list, empty, more, articleForm);
  renderTry();

  return act(async () => {
    await Promise.all([loadProvider(), loadPersonas(), loadArticles()]);
    await loadAccounts(); // its pickers list the personalities
  });
}
