// Inbox: the conversation list (filters, search, live), a thread rendering every message type,
// and a composer (text, attachment, reply, react), with the per-chat AI and Jira switches.

import { api, mediaUrl } from "./api.js";
import { clear, debounce, formatBytes, h, initials } from "./dom.js";
import { formatDay, formatTime, t } from "./i18n.js";
import * as realtime from "./realtime.js";

const PAGE = 50;
const REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏"];
const TICKS = { pending: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓", played: "✓✓", failed: "!" };

function paperclip() {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "20");
  svg.setAttribute("height", "20");
  svg.setAttribute("aria-hidden", "true");
  svg.innerHTML =
    '<path d="M21 11.5l-8.6 8.6a5.5 5.5 0 01-7.8-7.8l8.6-8.6a3.7 3.7 0 015.2 5.2l-8.6 8.6a1.8 1.8 0 01-2.6-2.6l8-8" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round"/>';
  return svg;
}

function displayName(conv) {
  return conv.contact_name || (conv.contact?.phone ? `+${conv.contact.phone}` : conv.external_id);
}

function preview(last) {
  if (!last) return "";
  if (last.deleted) return t("msg.deleted");
  const label = last.message_type === "text" ? "" : `${t(`type.${last.message_type}`, {}, last.message_type)}`;
  const text = last.text_preview || "";
  const mine = last.direction === "outbound" ? `${t("msg.you")}: ` : "";
  return mine + (label && text ? `${label} · ${text}` : label || text);
}

export async function renderInbox(view) {
  const state = {
    sessions: [],
    personalities: [],
    filters: { session_id: "", unread: false, archived: false, q: "" },
    conversations: [],
    nextCursor: null,
    current: null, // the open conversation
    messages: [], // oldest first
    olderCursor: null,
    hasOlder: false,
    replyTo: null,
    loadingOlder: false,
  };

  // -- the list pane ---------------------------------------------------------------------
  const accountSelect = h("select", { id: "filter-account" }, h("option", { value: "" }, t("inbox.all_accounts")));
  const unread = h("input", { type: "checkbox", id: "filter-unread" });
  const archived = h("input", { type: "checkbox", id: "filter-archived" });
  const search = h("input", { type: "search", id: "inbox-search", placeholder: t("inbox.search_placeholder"), autocomplete: "off" });
  const list = h("ul", { class: "conversations", id: "conversation-list", "aria-label": t("inbox.list") });
  const more = h("button", { type: "button", class: "link", hidden: true, onclick: () => loadConversations(true) }, t("inbox.more"));
  const listError = h("p", { class: "form-error", role: "alert" });
  const listPane = h(
    "section",
    { class: "list-pane", "aria-label": t("inbox.list") },
    h(
      "form",
      { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "inbox-search", class: "sr-only" }, t("inbox.search")),
      search,
      h(
        "div",
        { class: "row wrap" },
        h("label", { for: "filter-account", class: "sr-only" }, t("inbox.account")),
        accountSelect,
        h("label", { class: "check" }, unread, t("inbox.unread")),
        h("label", { class: "check" }, archived, t("inbox.archived")),
      ),
    ),
    listError,
    list,
    more,
  );

  // -- the thread pane -------------------------------------------------------------------
  const threadHead = h("div", { class: "thread-head" });
  const messagesEl = h("ol", { class: "messages", id: "messages", "aria-label": t("inbox.messages"), tabindex: "0" });
  const scroller = h("div", { class: "scroller" }, messagesEl);
  const replyBar = h("div", { class: "reply-bar", hidden: true });
  const text = h("textarea", { id: "composer-text", rows: 1, placeholder: t("composer.placeholder") });
  const file = h("input", { type: "file", id: "composer-file", class: "sr-only" });
  const fileChip = h("span", { class: "file-chip", hidden: true });
  const composerError = h("p", { class: "form-error", role: "alert" });
  const sendButton = h("button", { type: "submit", class: "primary", id: "composer-send" }, t("composer.send"));
  const composer = h(
    "form",
    { class: "composer", "aria-label": t("composer.form") },
    replyBar,
    fileChip,
    h(
      "div",
      { class: "row" },
      h("label", { for: "composer-file", class: "attach button", title: t("composer.attach") }, paperclip(), h("span", { class: "sr-only" }, t("composer.attach"))),
      file,
      h("label", { for: "composer-text", class: "sr-only" }, t("composer.label")),
      text,
      sendButton,
    ),
    composerError,
  );
  const empty = h("p", { class: "empty muted" }, t("inbox.pick"));
  const threadPane = h("section", { class: "thread-pane", "aria-label": t("inbox.thread") }, empty);

  clear(view, h("h1", { class: "sr-only" }, t("nav.inbox")), h("div", { class: "inbox" }, listPane, threadPane));

  // -- conversations ---------------------------------------------------------------------
  function convItem(conv) {
    const active = state.current?.id === conv.id;
    const when = conv.last_message_at ? formatDay(conv.last_message_at) : "";
    return h(
      "li",
      { class: `conv${conv.needs_human ? " needs-human" : ""}`, dataset: { conversationId: conv.id } },
      h(
        "button",
        { type: "button", class: "conv-button", "aria-current": active ? "true" : false, onclick: () => openConversation(conv) },
        h("span", { class: "avatar", "aria-hidden": "true" }, initials(displayName(conv))),
        h(
          "span",
          { class: "conv-main" },
          h("span", { class: "conv-top" }, h("span", { class: "conv-name" }, displayName(conv)), h("time", { class: "conv-time" }, when)),
          h(
            "span",
            { class: "conv-bottom" },
            h("span", { class: "conv-preview" }, preview(conv.last_message)),
            conv.needs_human ? h("span", { class: "marker human", title: t("inbox.needs_human") }, "!", h("span", { class: "sr-only" }, t("inbox.needs_human"))) : null,
            conv.ai_active ? h("span", { class: "marker ai", title: t("inbox.ai_on") }, "AI") : null,
            conv.jira_bridge ? h("span", { class: "marker jira", title: conv.ticket_key || t("inbox.jira_on") }, conv.ticket_key || "Jira") : null,
            conv.unread_count
              ? h("span", { class: "unread", "aria-label": t("inbox.unread_count", { n: conv.unread_count }) }, String(conv.unread_count))
              : null,
          ),
        ),
      ),
    );
  }

  function renderList() {
    clear(list, state.conversations.length ? state.conversations.map(convItem) : h("li", { class: "muted empty" }, t("inbox.no_conversations")));
    more.hidden = !state.nextCursor;
  }

  let listGeneration = 0;
  async function loadConversations(append = false) {
    const generation = ++listGeneration; // only the newest answer is shown
    listError.textContent = "";
    const f = state.filters;
    try {
      const page = await api("/api/v1/conversations", {
        query: {
          session_id: f.session_id,
          unread: f.unread ? "true" : undefined,
          archived: f.archived ? "true" : "false",
          q: f.q.trim() || undefined,
          cursor: append ? state.nextCursor : undefined,
          limit: PAGE,
        },
      });
      if (generation !== listGeneration) return;
      state.conversations = append ? [...state.conversations, ...page.items] : page.items;
      state.nextCursor = page.next_cursor;
      if (state.current) {
        const fresh = state.conversations.find((c) => c.id === state.current.id);
        if (fresh) {
          state.current = fresh;
          renderHead();
        }
      }
      renderList();
    } catch (err) {
      // A gateway that cannot be reached is the banner's news; the list stays as it was.
      if (err.code !== "network") listError.textContent = err.message;
    }
  }
  const reloadSoon = debounce(() => loadConversations(), 150);

  async function loadSessions() {
    try {
      state.sessions = (await api("/api/v1/sessions")).items;
      state.personalities = (await api("/api/v1/personalities")).items;
    } catch {
      return;
    }
    renderHead();
    const chosen = accountSelect.value;
    clear(
      accountSelect,
      h("option", { value: "" }, t("inbox.all_accounts")),
      state.sessions.map((s) => h("option", { value: String(s.id) }, s.name + (s.phone ? ` (+${s.phone})` : ""))),
    );
    accountSelect.value = chosen;
  }

  accountSelect.addEventListener("change", () => {
    state.filters.session_id = accountSelect.value;
    loadConversations();
  });
  unread.addEventListener("change", () => {
    state.filters.unread = unread.checked;
    loadConversations();
  });
  archived.addEventListener("change", () => {
    state.filters.archived = archived.checked;
    loadConversations();
  });
  search.addEventListener("input", debounce(() => {
    state.filters.q = search.value;
    loadConversations();
  }, 300));

  // -- the open thread -------------------------------------------------------------------
  function renderHead() {
    const conv = state.current;
    if (!conv) return;
    const switchFor = (field, label, id) => {
      const box = h("input", { type: "checkbox", role: "switch", id, checked: Boolean(conv[field]) });
      // "Never AI" wins: the AI switch cannot turn it on while that is set.
      if (field === "ai_active" && conv.no_ac_ai) box.disabled = true;
      box.addEventListener("change", () => patch({ [field]: box.checked }, box));
      return h("label", { class: "switch", for: id }, box, h("span", {}, label));
    };
    clear(
      threadHead,
      h("button", { type: "button", class: "back", onclick: closeConversation, "aria-label": t("inbox.back") }, "←"),
      h("span", { class: "avatar", "aria-hidden": "true" }, initials(displayName(conv))),
      h(
        "div",
        { class: "thread-title" },
        h("h2", { id: "thread-title", tabindex: "-1" }, displayName(conv)),
        h("span", { class: "muted" }, conv.contact?.phone ? `+${conv.contact.phone}` : conv.external_id),
        conv.needs_human ? h("span", { class: "marker human" }, t("inbox.needs_human")) : null,
        conv.needs_human
          ? h("button", { type: "button", class: "link ai-resume", onclick: resumeAi }, t("ai.resume"))
          : null,
      ),
      h(
        "div",
        { class: "switches" },
        switchFor("ai_active", t("inbox.ai"), "switch-ai"),
        switchFor("no_ac_ai", t("inbox.never_ai"), "switch-never-ai"),
        personalityPicker(conv),
        switchFor("jira_bridge", t("inbox.jira"), "switch-jira"),
        conv.ticket_key ? h("span", { class: "marker jira" }, conv.ticket_key) : null,
      ),
    );
  }

  // Which personality the AI speaks with in this chat (empty: the account's default).
  function personalityPicker(conv) {
    if (!state.personalities.length && conv.personality_id == null) return null;
    const picker = h(
      "select",
      { class: "personality-picker", "aria-label": t("inbox.personality"), title: t("inbox.personality") },
      h("option", { value: "" }, t("inbox.personality_default")),
      state.personalities.map((p) =>
        h("option", { value: String(p.id), selected: p.id === conv.personality_id }, p.name),
      ),
    );
    picker.addEventListener("change", async () => {
      picker.disabled = true;
      try {
        await patchConversation({ personality_id: picker.value ? Number(picker.value) : null });
      } catch (err) {
        composerError.textContent = err.message;
        picker.value = conv.personality_id == null ? "" : String(conv.personality_id);
        picker.disabled = false;
      }
    });
    return picker;
  }

  async function patchConversation(changes) {
    state.current = await api(`/api/v1/conversations/${state.current.id}`, { method: "PATCH", body: changes });
    const i = state.conversations.findIndex((c) => c.id === state.current.id);
    if (i >= 0) state.conversations[i] = state.current;
    renderList();
    renderHead();
  }

  async function resumeAi() {
    try {
      await api(`/api/v1/conversations/${state.current.id}/ai/resume`, { method: "POST" });
      state.current = await api(`/api/v1/conversations/${state.current.id}`);
      const i = state.conversations.findIndex((c) => c.id === state.current.id);
      if (i >= 0) state.conversations[i] = state.current;
      renderList();
      renderHead();
    } catch (err) {
      composerError.textContent = err.message;
    }
  }

  async function patch(changes, box) {
    box.disabled = true;
    try {
      await patchConversation(changes);
    } catch (err) {
      box.checked = !box.checked;
      composerError.textContent = err.message;
      box.disabled = false;
    }
  }

  async function openConversation(conv) {
    state.current = conv;
    state.messages = [];
    state.replyTo = null;
    clear(threadPane, threadHead, scroller, composer);
    view.classList.add("thread-open");
    renderHead();
    renderReply();
    renderList();
    clear(messagesEl);
    try {
      await loadLatest(true);
    } catch (err) {
      composerError.textContent = err.message;
    }
    document.getElementById("thread-title")?.focus({ preventScroll: true });
    if (conv.unread_count) markRead(conv);
  }

  function closeConversation() {
    state.current = null;
    view.classList.remove("thread-open");
    clear(threadPane, empty);
    renderList();
  }

  async function markRead(conv) {
    conv.unread_count = 0;
    renderList();
    try {
      await api(`/api/v1/conversations/${conv.id}/read`, { method: "POST" });
      reloadSoon();
    } catch {
      // not worth a message: the list shows the count again
    }
  }

  function mergeMessages(items) {
    const byId = new Map(state.messages.map((m) => [m.id, m]));
    for (const m of items) byId.set(m.id, m);
    state.messages = [...byId.values()].sort((a, b) => a.id - b.id);
  }

  async function loadLatest(first = false) {
    const conv = state.current;
    if (!conv) return;
    const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
    const page = await api(`/api/v1/conversations/${conv.id}/messages`, { query: { limit: PAGE } });
    if (state.current?.id !== conv.id) return;
    mergeMessages(page.items);
    if (first) {
      state.olderCursor = page.before;
      state.hasOlder = page.items.length === PAGE;
    }
    renderMessages();
    if (first || nearBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  async function loadNewer() {
    const conv = state.current;
    if (!conv) return;
    const last = state.messages.at(-1);
    if (!last) return loadLatest(true);
    const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 120;
    const page = await api(`/api/v1/conversations/${conv.id}/messages`, { query: { after: last.id, limit: 200 } });
    if (state.current?.id !== conv.id) return;
    mergeMessages(page.items);
    renderMessages();
    if (nearBottom || page.items.some((m) => m.direction === "outbound")) scroller.scrollTop = scroller.scrollHeight;
  }

  async function loadOlder() {
    const conv = state.current;
    if (!conv || !state.hasOlder || state.loadingOlder || !state.olderCursor) return;
    state.loadingOlder = true;
    try {
      const page = await api(`/api/v1/conversations/${conv.id}/messages`, { query: { before: state.olderCursor, limit: PAGE } });
      if (state.current?.id !== conv.id) return;
      const before = scroller.scrollHeight;
      mergeMessages(page.items);
      state.olderCursor = page.before;
      state.hasOlder = page.items.length === PAGE;
      renderMessages();
      scroller.scrollTop += scroller.scrollHeight - before;
    } finally {
      state.loadingOlder = false;
    }
  }
  scroller.addEventListener("scroll", () => {
    if (scroller.scrollTop < 60) quietly(loadOlder());
  });

  function renderMessages() {
    const byWaId = new Map(state.messages.filter((m) => m.wa_message_id).map((m) => [m.wa_message_id, m]));
    const items = [];
    if (state.hasOlder) items.push(h("li", { class: "older muted" }, t("inbox.older")));
    let day = null;
    for (const m of state.messages) {
      const d = new Date(m.sent_at).toDateString();
      if (d !== day) {
        day = d;
        items.push(h("li", { class: "day", role: "separator" }, formatDay(m.sent_at, true)));
      }
      items.push(bubble(m, byWaId));
    }
    clear(messagesEl, items);
  }

  function bubble(m, byWaId) {
    const out = m.direction === "outbound";
    const quoted = m.quoted_wa_message_id ? byWaId.get(m.quoted_wa_message_id) : null;
    const reactions = Object.values(m.reactions || {});
    return h(
      "li",
      {
        class: `msg ${out ? "out" : "in"}${m.deleted ? " deleted" : ""}`,
        dataset: { messageId: m.id, type: m.message_type, status: m.status },
      },
      h(
        "div",
        { class: "bubble" },
        m.sender_name && !out && state.current?.kind === "group" ? h("p", { class: "sender" }, m.sender_name) : null,
        m.quoted_wa_message_id
          ? h("blockquote", { class: "quoted" }, quoted ? quoted.text_content || t(`type.${quoted.message_type}`, {}, quoted.message_type) : t("msg.quoted"))
          : null,
        m.deleted && !m.text_content && !m.media ? h("p", { class: "muted" }, t("msg.deleted")) : body(m),
        h(
          "p",
          { class: "meta" },
          m.deleted ? h("span", { class: "flag" }, t("msg.deleted_mark")) : null,
          m.edited ? h("span", { class: "flag" }, t("msg.edited")) : null,
          h("time", { datetime: m.sent_at }, formatTime(m.sent_at)),
          out
            ? h("span", { class: `ticks tick-${m.status}`, title: t(`status.${m.status}`, {}, m.status), "aria-label": t(`status.${m.status}`, {}, m.status) }, TICKS[m.status] || "")
            : null,
        ),
        m.error ? h("p", { class: "form-error" }, m.error) : null,
      ),
      reactions.length ? h("p", { class: "reactions", "aria-label": t("msg.reactions") }, reactions.join(" ")) : null,
      m.deleted ? null : actions(m),
    );
  }

  function actions(m) {
    const picker = h(
      "div",
      { class: "picker", hidden: true, role: "group", "aria-label": t("msg.react") },
      REACTIONS.map((emoji) => h("button", { type: "button", onclick: () => react(m, emoji) }, emoji)),
    );
    return h(
      "div",
      { class: "msg-actions" },
      h("button", { type: "button", class: "link", onclick: () => startReply(m) }, t("msg.reply")),
      h(
        "button",
        {
          type: "button",
          class: "link",
          "aria-expanded": "false",
          onclick: (e) => {
            picker.hidden = !picker.hidden;
            e.currentTarget.setAttribute("aria-expanded", String(!picker.hidden));
          },
        },
        t("msg.react"),
      ),
      picker,
    );
  }

  function body(m) {
    const caption = m.text_content ? h("p", { class: "text" }, m.text_content) : null;
    const d = m.details || {};
    switch (m.message_type) {
      case "image":
      case "sticker":
        return [media(m, (url) => h("img", { src: url, alt: m.text_content || t(`type.${m.message_type}`), class: m.message_type, loading: "lazy" })), caption];
      case "video":
        return [media(m, (url) => h("video", { src: url, controls: true, preload: "metadata" })), caption];
      case "audio":
      case "voice":
      case "ptt":
        return [media(m, (url) => h("audio", { src: url, controls: true, preload: "metadata" })), caption];
      case "document":
        return [document_(m), caption];
      case "location":
      case "live_location": {
        const loc = d.location || {};
        const lat = loc.latitude ?? loc.lat;
        const lng = loc.longitude ?? loc.lng;
        const label = loc.name || loc.address || (lat !== undefined ? `${lat}, ${lng}` : t("type.location"));
        return [
          h("p", { class: "text" }, "📍 ", lat !== undefined
            ? h("a", { href: `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lng}#map=16/${lat}/${lng}`, target: "_blank", rel: "noopener" }, label)
            : label),
          loc.address && loc.name ? h("p", { class: "muted" }, loc.address) : null,
          caption,
        ];
      }
      case "contact":
      case "contacts": {
        const cards = d.contacts || [];
        return h(
          "ul",
          { class: "vcards" },
          cards.length
            ? cards.map((c) => {
                const name = c.display_name || c.name || (c.vcard || "").match(/FN:(.*)/)?.[1] || t("type.contact");
                const tel = (c.vcard || "").match(/TEL[^:]*:(.*)/)?.[1];
                return h("li", { class: "vcard" }, "👤 ", h("strong", {}, name), tel ? [" ", h("a", { href: `tel:${tel.trim()}` }, tel.trim())] : null);
              })
            : h("li", {}, m.text_content || t("type.contact")),
        );
      }
      case "poll": {
        const poll = d.poll || {};
        return [
          h("p", { class: "text" }, "📊 ", h("strong", {}, poll.name || m.text_content || t("type.poll"))),
          poll.options ? h("ul", { class: "poll" }, poll.options.map((o) => h("li", {}, typeof o === "string" ? o : o.name))) : null,
        ];
      }
      case "text":
        return caption || h("p", { class: "text muted" }, "…");
      default:
        return [h("p", { class: "muted" }, t(`type.${m.message_type}`, {}, `[${m.message_type}]`)), caption];
    }
  }

  function media(m, make) {
    const holder = h("div", { class: "media" });
    if (!m.media || m.media.status !== "stored" || !m.media.url) {
      const st = m.media?.status || "pending";
      holder.append(h("p", { class: "muted" }, t(`media.${st}`, {}, st)));
      return holder;
    }
    holder.append(h("span", { class: "muted" }, t("media.loading")));
    mediaUrl(m.media.url).then(
      (url) => clear(holder, make(url)),
      () => clear(holder, h("p", { class: "muted" }, t("media.failed"))),
    );
    return holder;
  }

  function document_(m) {
    const name = m.media?.filename || t("type.document");
    const size = formatBytes(m.media?.size);
    if (!m.media?.url) return h("p", { class: "doc" }, "📄 ", name, " ", h("span", { class: "muted" }, t(`media.${m.media?.status || "pending"}`, {}, "")));
    const link = h("a", { href: "#", class: "doc", download: name }, "📄 ", name, size ? h("span", { class: "muted" }, ` (${size})`) : null);
    link.addEventListener("click", async (event) => {
      if (link.dataset.ready) return;
      event.preventDefault();
      link.href = await mediaUrl(m.media.url);
      link.dataset.ready = "1";
      link.click();
    });
    return link;
  }

  // -- composing -------------------------------------------------------------------------
  function startReply(m) {
    state.replyTo = m;
    renderReply();
    text.focus();
  }

  function renderReply() {
    const m = state.replyTo;
    replyBar.hidden = !m;
    if (!m) return clear(replyBar);
    clear(
      replyBar,
      h("span", {}, t("composer.replying"), " ", h("q", {}, (m.text_content || t(`type.${m.message_type}`, {}, m.message_type)).slice(0, 80))),
      h("button", { type: "button", class: "link", onclick: () => { state.replyTo = null; renderReply(); }, "aria-label": t("composer.cancel_reply") }, "✕"),
    );
  }

  async function react(m, emoji) {
    try {
      await api(`/api/v1/messages/${m.id}/reactions`, { method: "POST", body: { emoji } });
      await loadLatest();
    } catch (err) {
      composerError.textContent = err.message;
    }
  }

  file.addEventListener("change", () => {
    const chosen = file.files[0];
    fileChip.hidden = !chosen;
    clear(
      fileChip,
      chosen ? [`📎 ${chosen.name} (${formatBytes(chosen.size)}) `, h("button", { type: "button", class: "link", "aria-label": t("composer.remove_file"), onclick: () => { file.value = ""; file.dispatchEvent(new Event("change")); } }, "✕")] : null,
    );
  });

  text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });

  composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const conv = state.current;
    if (!conv) return;
    const chosen = file.files[0];
    const words = text.value.trim();
    if (!chosen && !words) return;
    composerError.textContent = "";
    sendButton.disabled = true;
    try {
      if (chosen) {
        const form = new FormData();
        form.append("file", chosen, chosen.name);
        if (words) form.append("text", words);
        await api(`/api/v1/conversations/${conv.id}/messages`, { method: "POST", form, idempotent: true });
      } else {
        const body = { text: words };
        if (state.replyTo) body.reply_to = state.replyTo.id;
        await api(`/api/v1/conversations/${conv.id}/messages`, { method: "POST", body, idempotent: true });
      }
      text.value = "";
      file.value = "";
      file.dispatchEvent(new Event("change"));
      state.replyTo = null;
      renderReply();
      await loadNewer();
    } catch (err) {
      composerError.textContent = err.status === 409 ? `${t("composer.cannot_send")} ${err.message}` : err.message;
    } finally {
      sendButton.disabled = false;
      text.focus();
    }
  });

  // -- live ------------------------------------------------------------------------------
  // A failed refresh must not become an unhandled rejection; the next event retries it.
  const quietly = (promise) => promise?.catch?.((err) => console.warn("refresh failed", err));
  const isOpen = (data) => state.current && data.conversation_id === state.current.id;
  const offs = [
    realtime.on("message-new", (data) => {
      if (isOpen(data)) {
        quietly(loadNewer());
        if (data.direction === "inbound" && document.visibilityState === "visible") markRead(state.current);
      }
      reloadSoon();
    }),
    realtime.on("message-status", (data) => {
      const m = state.messages.find((x) => x.id === data.id);
      if (m && data.status) {
        m.status = data.status;
        if (data.error !== undefined) m.error = data.error;
        renderMessages();
      } else if (isOpen(data)) {
        quietly(loadLatest());
      }
    }),
    realtime.on("message-updated", (data) => {
      if (isOpen(data) || state.messages.some((x) => x.id === data.id)) quietly(loadLatest());
    }),
    realtime.on("conversation-updated", () => reloadSoon()),
    realtime.on("conversation-merged", () => reloadSoon()),
    realtime.on("session-state", () => loadSessions()),
    realtime.on("reconnected", () => {
      loadSessions();
      loadConversations();
      if (state.current) quietly(loadNewer());
    }),
  ];

  await Promise.all([loadSessions(), loadConversations()]);
  return () => offs.forEach((off) => off());
}
