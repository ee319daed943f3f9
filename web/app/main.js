// The single page: log in, then Inbox / Accounts / Settings, routed by the URL fragment.

import { ApiError, api, auth, forgetMedia } from "./api.js";
import { clear, h } from "./dom.js";
import { t } from "./i18n.js";
import * as realtime from "./realtime.js";
import { renderAccounts } from "./accounts.js";
import { renderInbox } from "./inbox.js";
import { renderSettings } from "./settings.js";

const main = document.getElementById("main");
const top = document.getElementById("top");
const banner = document.getElementById("banner");

let me = null;
let teardown = () => {};

const ROUTES = {
  inbox: renderInbox,
  accounts: renderAccounts,
  settings: renderSettings,
};

function route() {
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { name: ROUTES[name] ? name : "inbox", args: rest };
}

function renderLogin(message) {
  top.hidden = true;
  banner.hidden = true;
  const error = h("p", { class: "form-error", id: "login-error", role: "alert" });
  const email = h("input", {
    id: "login-email", name: "email", type: "email", autocomplete: "username", required: true,
  });
  const password = h("input", {
    id: "login-password", name: "password", type: "password",
    autocomplete: "current-password", required: true,
  });
  const submit = h("button", { type: "submit", class: "primary" }, t("login.submit"));
  const form = h(
    "form",
    { class: "login card", "aria-labelledby": "login-title", novalidate: true },
    h("h1", { id: "login-title" }, "wagate"),
    h("p", { class: "muted" }, t("login.intro")),
    h("label", { for: "login-email" }, t("login.email")),
    email,
    h("label", { for: "login-password" }, t("login.password")),
    password,
    error,
    submit,
  );
  if (message) error.textContent = message;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    if (!email.value || !password.value) {
      error.textContent = t("login.missing");
      return;
    }
    submit.disabled = true;
    try {
      const got = await api("/api/v1/auth/login", {
        method: "POST",
        body: { email: email.value.trim(), password: password.value },
      });
      auth.save(got.access_token);
      await start();
    } catch (err) {
      error.textContent =
        err instanceof ApiError && err.status === 401
          ? t("login.wrong")
          : err instanceof ApiError && err.status === 429
            ? t("login.throttled")
            : `${t("login.failed")} ${err.message}`;
      password.select();
    } finally {
      submit.disabled = false;
    }
  });
  clear(main, form);
  email.focus();
}

function renderTop() {
  const current = route().name;
  const link = (name) =>
    h(
      "a",
      { href: `#/${name}`, "aria-current": current === name ? "page" : false },
      t(`nav.${name}`),
    );
  clear(
    top,
    h("span", { class: "brand" }, "wagate"),
    h("nav", { "aria-label": t("nav.label") }, link("inbox"), link("accounts"), link("settings")),
    h(
      "div",
      { class: "who" },
      h("span", { class: "muted email", title: me?.email }, me?.email || ""),
      h("button", { type: "button", id: "logout", onclick: logout }, t("nav.logout")),
    ),
  );
  top.hidden = false;
}

async function show() {
  teardown();
  teardown = () => {};
  renderTop();
  const { name, args } = route();
  const view = h("div", { class: `view view-${name}` });
  clear(main, view);
  const result = await ROUTES[name](view, args);
  if (typeof result === "function") teardown = result;
}

function logout() {
  teardown();
  teardown = () => {};
  realtime.disconnect();
  auth.clear();
  forgetMedia();
  me = null;
  location.hash = "";
  renderLogin();
}

async function start() {
  try {
    me = await api("/api/v1/me");
  } catch (err) {
    auth.clear();
    renderLogin(err instanceof ApiError && err.status === 401 ? t("login.expired") : err.message);
    return;
  }
  realtime.connect();
  await show();
}

realtime.onStatus((status) => {
  if (status === "offline") {
    banner.textContent = t("banner.offline");
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
  document.body.dataset.realtime = status;
});

auth.onUnauthorized(() => {
  if (!me) return;
  teardown();
  teardown = () => {};
  realtime.disconnect();
  auth.clear();
  me = null;
  renderLogin(t("login.expired"));
});

window.addEventListener("hashchange", () => {
  if (me) show();
});

document.documentElement.lang = t.lang;
document.title = "wagate";
if (auth.token) start();
else renderLogin();
