// The AI responder (Settings): the provider (knowledge base only, or an OpenAI-compatible model
// with its URL, model and key), personalities, and the knowledge-base articles it answers from.
// The API key is never shown back: only whether one is set.

import { ApiError, api } from "./api.js";
import { clear, h } from "./dom.js";
import { t } from "./i18n.js";

const LANGS = ["en", "es", "pt"];

function field(id, label, input) {
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input);
}

function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)),
  );
}

export function renderAi(section) {
  const status = h("p", { class: "form-error", role: "alert" });
  const saved = h("p", { class: "muted", role: "status" });
  const providerBox = h("div", { class: "ai-provider" });
  const personasBox = h("div", { class: "ai-personalities" });
  const articlesBox = h("div", { class: "kb-articles" });
  clear(
    section,
    h("h2", { id: "settings-ai" }, t("settings.ai")),
    h("p", { class: "muted" }, t("settings.ai_text")),
    status,
    providerBox,
    h("h3", {}, t("ai.personalities")),
    personasBox,
    h("h3", {}, t("ai.kb")),
    articlesBox,
  );

  async function act(fn) {
    status.textContent = "";
    saved.textContent = "";
    try {
      await fn();
    } catch (err) {
      status.textContent = err instanceof ApiError ? err.message : String(err);
    }
  }

  async function loadProvider() {
    const current = await api("/api/v1/ai/settings");
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
    const threshold = h("input", {
      type: "number", min: 0, max: 1, step: 0.05, value: current.kb_threshold,
    });
    const pause = h("input", {
      type: "number", min: 0, step: 1, value: current.operator_pause_minutes,
    });
    const modelFields = h(
      "div",
      { class: "ai-model-fields", hidden: current.provider !== "openai" },
      field("ai-base-url", t("ai.base_url"), baseUrl),
      field("ai-model", t("ai.model"), model),
      field("ai-key", t("ai.api_key"), key),
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
        };
        if (provider.value === "openai") {
          body.base_url = baseUrl.value;
          body.model = model.value;
          if (key.value) body.api_key = key.value;
        }
        await api("/api/v1/ai/settings", { method: "PATCH", body });
        await loadProvider();
        saved.textContent = t("ai.saved");
      });
    });
    clear(providerBox, form);
  }

  async function loadPersonas() {
    const { items } = await api("/api/v1/personalities");
    const name = h("input", { type: "text", required: true, maxlength: 100 });
    const instructions = h("textarea", { rows: 3, maxlength: 8000 });
    const language = select("language", [["", t("ai.any_language")], ...LANGS.map((l) => [l, l])], "");
    const tone = h("input", { type: "text", maxlength: 200 });
    const form = h(
      "form",
      { class: "ai-personality-form", "aria-label": t("ai.add_personality") },
      field("ai-p-name", t("ai.name"), name),
      field("ai-p-instructions", t("ai.instructions"), instructions),
      field("ai-p-language", t("ai.language"), language),
      field("ai-p-tone", t("ai.tone"), tone),
      h("button", { type: "submit" }, t("ai.add_personality")),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      act(async () => {
        await api("/api/v1/personalities", {
          method: "POST",
          body: {
            name: name.value,
            instructions: instructions.value,
            language: language.value || null,
            tone: tone.value || null,
          },
        });
        await loadPersonas();
      });
    });
    clear(
      personasBox,
      items.length
        ? h(
            "ul",
            { class: "personalities" },
            items.map((p) =>
              h(
                "li",
                { class: "personality", dataset: { id: p.id } },
                h("strong", {}, p.name),
                " ",
                h("span", { class: "muted" }, [p.language, p.tone].filter(Boolean).join(" · ")),
                " ",
                h(
                  "button",
                  {
                    type: "button",
                    class: "link",
                    onclick: () =>
                      act(async () => {
                        await api(`/api/v1/personalities/${p.id}`, { method: "DELETE" });
                        await loadPersonas();
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

  async function loadArticles() {
    const { items } = await api("/api/v1/kb/articles", { query: { limit: 200 } });
    const title = h("input", { type: "text", required: true, maxlength: 300 });
    const body = h("textarea", { rows: 4, required: true, maxlength: 20000 });
    const tags = h("input", { type: "text", placeholder: t("ai.tags_hint") });
    const language = select("language", LANGS.map((l) => [l, l]), t.lang?.slice(0, 2) || "en");
    const form = h(
      "form",
      { class: "kb-article-form", "aria-label": t("ai.add_article") },
      field("kb-title", t("ai.title"), title),
      field("kb-body", t("ai.answer"), body),
      field("kb-tags", t("ai.tags"), tags),
      field("kb-language", t("ai.language"), language),
      h("button", { type: "submit" }, t("ai.add_article")),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      act(async () => {
        await api("/api/v1/kb/articles", {
          method: "POST",
          body: {
            title: title.value,
            body: body.value,
            tags: tags.value.split(",").map((s) => s.trim()).filter(Boolean),
            language: language.value,
          },
        });
        await loadArticles();
      });
    });
    clear(
      articlesBox,
      items.length
        ? h(
            "ul",
            { class: "kb-list" },
            items.map((a) =>
              h(
                "li",
                { class: "kb-article", dataset: { id: a.id } },
                h("strong", { class: "kb-title" }, a.title),
                " ",
                h("span", { class: "badge tone-idle" }, a.language),
                a.tags.length ? h("span", { class: "muted" }, ` ${a.tags.join(", ")}`) : null,
                h("p", { class: "kb-body" }, a.body),
                h(
                  "button",
                  {
                    type: "button",
                    class: "link",
                    onclick: () =>
                      act(async () => {
                        await api(`/api/v1/kb/articles/${a.id}`, { method: "DELETE" });
                        await loadArticles();
                      }),
                  },
                  t("ai.remove"),
                ),
              ),
            ),
          )
        : h("p", { class: "muted" }, t("ai.no_articles")),
      form,
    );
  }

  return act(() => Promise.all([loadProvider(), loadPersonas(), loadArticles()]));
}
