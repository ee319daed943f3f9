// Settings: outgoing webhooks, the Jira bridge, the AI responder; where Cloud API numbers will
// be configured.

import { renderAi } from "./ai.js";
import { clear, h } from "./dom.js";
import { t } from "./i18n.js";
import { renderJira } from "./jira.js";
import { renderWebhooks } from "./webhooks.js";

const SECTIONS = ["cloud"];

export function renderSettings(view) {
  const webhooks = h("section", {
    class: "card settings-section",
    "aria-labelledby": "settings-webhooks",
  });
  const jira = h("section", { class: "card settings-section", "aria-labelledby": "settings-jira" });
  const ai = h("section", { class: "card settings-section", "aria-labelledby": "settings-ai" });
  clear(
    view,
    h("h1", {}, t("nav.settings")),
    webhooks,
    jira,
    ai,
    SECTIONS.map((name) =>
      h(
        "section",
        { class: "card settings-section", "aria-labelledby": `settings-${name}` },
        h("h2", { id: `settings-${name}` }, t(`settings.${name}`), " ", h("span", { class: "badge tone-idle" }, t("settings.coming"))),
        h("p", { class: "muted" }, t(`settings.${name}_text`)),
      ),
    ),
  );
  renderAi(ai);
  const stopJira = renderJira(jira);
  const stopWebhooks = renderWebhooks(webhooks);
  return () => {
    stopJira();
    stopWebhooks();
  };
}
