// Settings: outgoing webhooks, the Jira bridge, the AI responder, Cloud API numbers.

import { renderAi } from "./ai.js";
import { renderCloud } from "./cloud.js";
import { clear, h } from "./dom.js";
import { t } from "./i18n.js";
import { renderJira } from "./jira.js";
import { renderWebhooks } from "./webhooks.js";

export function renderSettings(view) {
  const section = (id) => h("section", { class: "card settings-section", "aria-labelledby": id });
  const webhooks = section("settings-webhooks");
  const jira = section("settings-jira");
  const ai = section("settings-ai");
  const cloud = section("settings-cloud");
  clear(view, h("h1", {}, t("nav.settings")), webhooks, jira, ai, cloud);
  renderAi(ai);
  const stopJira = renderJira(jira);
  const stopWebhooks = renderWebhooks(webhooks);
  const stopCloud = renderCloud(cloud);
  return () => {
    stopJira();
    stopWebhooks();
    stopCloud();
  };
}
