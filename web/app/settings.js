// Settings: where Jira, the AI responder and Cloud API numbers will be configured.

import { clear, h } from "./dom.js";
import { t } from "./i18n.js";

const SECTIONS = ["jira", "ai", "cloud"];

export function renderSettings(view) {
  clear(
    view,
    h("h1", {}, t("nav.settings")),
    SECTIONS.map((name) =>
      h(
        "section",
        { class: "card settings-section", "aria-labelledby": `settings-${name}` },
        h("h2", { id: `settings-${name}` }, t(`settings.${name}`), " ", h("span", { class: "badge tone-idle" }, t("settings.coming"))),
        h("p", { class: "muted" }, t(`settings.${name}_text`)),
      ),
    ),
  );
}
