/*
 * hpchat chat page: plain JavaScript, no build step, no dependencies. An ES module: the API is
 * spoken by HpchatClient (hpchat-client.js), which routes each stream to the node that serves
 * it, follows redirects, fails over between nodes and retries 503/429; see its header.
 *
 * The API base is the page's origin, or ?api=http://host:port when the page is served from
 * elsewhere; the other nodes are learnt from GET /v1/cluster. Messages are kept by seq, so one
 * that arrives twice (the send's answer and the poll) is shown once, and a send is repeated
 * with its client_id until a node answers. All user text goes into the page through
 * textContent, never as HTML.
 */
import {
  Aborted, ApiError, HpchatClient, USER_RE, normalizeBase as clientBase, randomId, sleep,
} from "./hpchat-client.js";


(function () {
  // ------------------------------------------------------------------ settings

  const params = new URLSearchParams(location.search);
  const API = normalizeBase(params.get("api") || location.origin);
  const POLL_TIMEOUT = 25;        // s: how long the server may hold a long-poll
  const CALL_TIMEOUT = 12000;     // ms: any other call
  const TYPING_REFRESH = 1500;    // ms between "typing: true" while the user types
  const TYPING_IDLE = 4000;       // ms without a key press before "typing: false"
  const HISTORY_PAGE = 30;
  const INBOX_BACKLOG = 20;       // earlier notifications listed at sign-in
  const SESSION_KEY = "hpchat.session:" + API;
  const NARROW = window.matchMedia("(max-width: 720px)");

  // ------------------------------------------------------------------ small helpers

  function normalizeBase(url) {
    try {
      return clientBase(url);
    } catch (e) {
      return location.origin;
    }
  }

  const $ = (id) => document.getElementById(id);

  /** An element with attributes and children; strings become text nodes (never HTML). */
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  const ICONS = {
    message: "M4 5h16v11H9l-5 4z",
    flirt: "M12 20s-7-4.4-7-10a4 4 0 0 1 7-2.6A4 4 0 0 1 19 10c0 5.6-7 10-7 10z",
    visit: "M12 6c5 0 8.5 4.5 9.5 6-1 1.5-4.5 6-9.5 6s-8.5-4.5-9.5-6C3.5 10.5 7 6 12 6zm0 3a3 3 0 1 0 0 6 3 3 0 0 0 0-6z",
    other: "M12 3a6 6 0 0 0-6 6v4l-2 3h16l-2-3V9a6 6 0 0 0-6-6zm-2 15a2 2 0 0 0 4 0z",
  };
  const ICON_COLORS = { message: "#4338ca", flirt: "#be185d", visit: "#15803d", other: "#586074" };

  function icon(type) {
    const kind = ICONS[type] ? type : "other";
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "18");
    svg.setAttribute("height", "18");
    svg.setAttribute("aria-hidden", "true");
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", ICONS[kind]);
    path.setAttribute("fill", ICON_COLORS[kind]);
    svg.append(path);
    return h("span", { class: "notif-icon" }, svg);
  }

  function hue(name) {
    let n = 0;
    for (const c of name) n = (n * 31 + c.codePointAt(0)) % 360;
    return n;
  }

  function avatar(node, name) {
    node.textContent = name.slice(0, 1);
    node.style.setProperty("--hue", String(hue(name)));
  }

  /** An AbortController that also aborts when `parent` does. */
  function childController(parent) {
    const ctl = new AbortController();
    if (parent.aborted) ctl.abort();
    else parent.addEventListener("abort", () => ctl.abort(), { once: true });
    return ctl;
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "short", day: "numeric" });

  function clock(ts) {
    return timeFormat.format(new Date(ts * 1000));
  }

  function dayLabel(ts) {
    const d = new Date(ts * 1000);
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (d.toDateString() === today.toDateString()) return "Today";
    if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
    return dayFormat.format(d);
  }

  function ago(ts) {
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 45) return "just now";
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return clock(ts);
    return dayLabel(ts);
  }

  // ------------------------------------------------------------------ the network

  const client = new HpchatClient({
    nodes: [API], pollTimeout: POLL_TIMEOUT, callTimeout: CALL_TIMEOUT,
    onStatus: () => renderStatus(),
    onUnauthorized: () => signOut("Your session has expired. Please sign in again."),
  });
  const routeFor = (stream) => client.route(stream);

  function errorText(res, fallback) {
    return (res && res.data && res.data.error && res.data.error.message) || fallback;
  }

  // ------------------------------------------------------------------ session

  let session = null;
  let sessionCtl = null;

  function loadSession() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
      if (saved && USER_RE.test(saved.user) && saved.token && saved.expires > Date.now() + 60000) return saved;
    } catch (e) {
      // ignore
    }
    return null;
  }

  async function signIn(user) {
    const error = $("signin-error");
    error.textContent = "";
    if (!USER_RE.test(user)) {
      error.textContent = "Use 1 to 64 letters, digits, “_” or “-”.";
      $("signin-user").focus();
      return;
    }
    const button = $("signin-submit");
    button.disabled = true;
    button.textContent = "Signing in…";
    try {
      const res = await client.devLogin(user);
      if (!res) {
        error.textContent = `Cannot reach the chat server at ${API}.`;
      } else if (res.status === 404) {
        error.replaceChildren("Sign-in without password is off on this server. It is enabled by ",
          h("code", { text: "[auth] dev_login = true" }),
          " in the nodes' configuration. You can also paste an access token below.");
        $("token-box").hidden = false;
      } else if (res.status !== 200 || !res.data || !res.data.token) {
        error.textContent = errorText(res, `Sign-in failed (HTTP ${res.status}).`);
      } else {
        useSession({ user: res.data.user, token: res.data.token, expires: Date.now() + res.data.expires_in * 1000 });
      }
    } finally {
      button.disabled = false;
      button.textContent = "Sign in";
    }
  }

  function useSession(s) {
    session = s;
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    start();
  }

  /** The user and expiry a pasted token names (its signature is the server's to check). */
  function tokenSession(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(atob(part + "=".repeat((4 - part.length % 4) % 4)));
      if (!USER_RE.test(claims.sub)) return null;
      const expires = Number(claims.exp) ? claims.exp * 1000 : Date.now() + 3600 * 1000;
      return expires > Date.now() + 60000 ? { user: claims.sub, token, expires } : null;
    } catch (e) {
      return null;
    }
  }

  function signInWithToken() {
    const s = tokenSession($("signin-token").value.trim());
    if (!s) {
      $("token-error").textContent = "That is not a valid, unexpired access token.";
      $("signin-token").focus();
      return;
    }
    $("token-error").textContent = "";
    $("signin-token").value = "";
    useSession(s);
  }

  function signOut(message) {
    if (sessionCtl) sessionCtl.abort();
    clearInterval(typing.refresh);
    clearTimeout(typing.idle);
    typing.conv = null;
    $("message-list").replaceChildren();
    sessionCtl = null;
    session = null;
    sessionStorage.removeItem(SESSION_KEY);
    conversations.clear();
    client.reset();
    current = null;
    notifications.length = 0;
    notifSeen.clear();
    unseen = 0;
    blocked.clear();
    presence.clear();
    clearInterval(presenceTimer);
    $("app").hidden = true;
    $("signin").hidden = false;
    $("toasts").replaceChildren();
    $("signin-error").textContent = message || "";
    $("signin-user").focus();
    document.title = "hpchat";
  }

  // ------------------------------------------------------------------ connection status

  function renderStatus() {
    if (!session) return;
    const watched = [routeFor("inbox:" + session.user)];
    if (current) watched.push(current.route);
    const pill = $("conn");
    let state, text;
    if (watched.some((r) => r.failing)) {
      state = "retrying";
      text = "Reconnecting…";
    } else if (watched.some((r) => r.base)) {
      state = "live";
      text = "Live";
    } else {
      state = "connecting";
      text = "Connecting…";
    }
    pill.dataset.state = state;
    if ($("conn-text").textContent !== text) $("conn-text").textContent = text;
  }

  // ------------------------------------------------------------------ presence and blocks

  const presence = new Map();   // user -> {online, last_seen}
  const blocked = new Set();    // users we have blocked
  let presenceTimer = null;

  async function refreshPresence() {
    if (!session || !current) return;
    const peer = current.peer;
    try {
      const states = await client.presence([peer], { signal: sessionCtl && sessionCtl.signal });
      if (states && states[peer]) {
        presence.set(peer, states[peer]);
        renderPresence();
      }
    } catch (e) {
      // shown again at the next refresh
    }
  }

  function renderPresence() {
    if (!current) return;
    const p = presence.get(current.peer);
    const node = $("presence");
    const online = !!(p && p.online);
    node.dataset.online = String(online);
    node.hidden = !p;
    $("presence-text").textContent = !p ? "" : online ? "Online"
      : p.last_seen ? `Last seen ${ago(p.last_seen)}` : "Offline";
  }

  async function loadBlocks(signal) {
    try {
      const users = await client.blocks({ signal });
      if (users) {
        for (const u of users) blocked.add(u);
        renderBlocked();
      }
    } catch (e) {
      // the block button still works; the list comes with the next sign-in
    }
  }

  async function toggleBlock() {
    if (!current) return;
    const peer = current.peer;
    const on = !blocked.has(peer);
    const button = $("block");
    button.disabled = true;
    try {
      const res = await (on ? client.block(peer, { signal: sessionCtl.signal })
        : client.unblock(peer, { signal: sessionCtl.signal }));
      if (res.status === 204 || res.status === 200) {
        if (on) blocked.add(peer);
        else blocked.delete(peer);
      } else {
        toast({ type: "other", text: [errorText(res, `Could not ${on ? "block" : "unblock"} ${peer} (HTTP ${res.status}).`)] });
      }
    } catch (e) {
      if (e instanceof ApiError) toast({ type: "other", text: [`Could not ${on ? "block" : "unblock"} ${peer}. Try again.`] });
    } finally {
      button.disabled = false;
      renderBlocked();
      refreshPresence();
    }
  }

  function renderBlocked() {
    if (!current) return;
    const peer = current.peer;
    const isBlocked = blocked.has(peer);
    const button = $("block");
    button.textContent = isBlocked ? "Unblock" : "Block";
    button.setAttribute("aria-label", `${isBlocked ? "Unblock" : "Block"} ${peer}`);
    const note = $("blocked-note");
    note.hidden = !isBlocked;
    note.textContent = isBlocked ? `You blocked ${peer}. Messages cannot be sent in this conversation until you unblock them.` : "";
    $("composer-text").disabled = isBlocked;
    $("send").disabled = isBlocked;
    $("composer-text").placeholder = isBlocked ? "Blocked" : "Write a message…";
    if (isBlocked) stopTyping(current);
  }

  // ------------------------------------------------------------------ contacts

  let contacts = [];   // {name, preview, at (preview's time), ts (last activity), unread}

  function contactsKey() {
    return "hpchat.contacts:" + API + ":" + session.user;
  }

  function loadContacts() {
    try {
      const saved = JSON.parse(localStorage.getItem(contactsKey()) || "[]");
      contacts = saved.filter((c) => c && USER_RE.test(c.name) && c.name !== session.user)
        .map((c) => ({ name: c.name, preview: String(c.preview || ""), at: Number(c.at) || 0, ts: Number(c.ts) || 0, unread: 0 }));
    } catch (e) {
      contacts = [];
    }
  }

  function saveContacts() {
    try {
      localStorage.setItem(contactsKey(), JSON.stringify(
        contacts.slice(0, 100).map(({ name, preview, at, ts }) => ({ name, preview, at, ts }))));
    } catch (e) {
      // storage full or disabled: contacts are only kept for this page
    }
  }

  function touchContact(name, preview, ts, unreadDelta) {
    let c = contacts.find((x) => x.name === name);
    if (!c) {
      c = { name, preview: "", at: 0, ts: Date.now() / 1000, unread: 0 };
      contacts.push(c);
    }
    if (preview !== undefined && ts >= c.at) {
      c.preview = preview;
      c.at = ts;
      c.ts = Math.max(c.ts, ts);
    }
    if (unreadDelta) c.unread += unreadDelta;
    contacts.sort((a, b) => b.ts - a.ts);
    saveContacts();
    renderContacts();
  }

  /** The server's list of our conversations: contacts, previews and unread counts. */
  async function loadConversationList(signal) {
    for (let round = 0; !signal.aborted && round < 5; round++) {
      try {
        const res = await client.conversations({ limit: 100, signal });
        if (res.moved) continue;
        if (res.status !== 200) return;
        for (const s of res.data.conversations) {
          if (!USER_RE.test(s.with) || s.with === session.user) continue;
          const m = s.last_message;
          const preview = m ? (m.sender === session.user ? "You: " : "") + m.text.slice(0, 80) : undefined;
          touchContact(s.with, preview, s.updated);
          const c = contacts.find((x) => x.name === s.with);
          const viewing = current && current.peer === s.with && isViewing(current);
          if (c && !viewing) c.unread = s.unread;
        }
        renderContacts();
        return;
      } catch (e) {
        if (e instanceof Aborted || signal.aborted) return;
        await sleep(1000, signal).catch(() => {});
      }
    }
  }

  function renderContacts() {
    const list = $("contacts");
    const focused = document.activeElement && document.activeElement.classList.contains("contact")
      ? document.activeElement.dataset.name : null;
    $("contacts-empty").hidden = contacts.length > 0;
    list.replaceChildren(...contacts.map((c) => {
      const isCurrent = current && current.peer === c.name;
      const typing = isCurrent && current.typing.length > 0;
      const av = h("span", { class: "avatar", "aria-hidden": "true" });
      avatar(av, c.name);
      const label = c.unread ? `${c.name}, ${c.unread} unread` : c.name;
      return h("li", {},
        h("button", {
          class: "contact", type: "button", "aria-current": isCurrent ? "true" : "false",
          "aria-label": label, dataset: { name: c.name },
          onclick: () => openConversation(c.name),
        },
        av,
        h("span", { class: "contact-main" },
          h("span", { class: "contact-name", text: c.name }),
          h("span", { class: "contact-preview" + (typing ? " is-typing" : ""), text: typing ? "typing…" : c.preview || " " })),
        c.unread ? h("span", { class: "unread", "aria-hidden": "true", text: String(c.unread) }) : null));
    }));
    $("contact-names").replaceChildren(...contacts.map((c) => h("option", { value: c.name })));
    if (focused) {
      const again = list.querySelector(`.contact[data-name="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  // ------------------------------------------------------------------ conversations

  const conversations = new Map();   // peer -> Conversation
  let current = null;
  let pendingOrder = 0;

  class Conversation {
    constructor(peer) {
      this.peer = peer;
      this.cid = client.conversationId(peer, session.user);
      this.route = routeFor(this.cid);
      this.messages = new Map();     // seq -> message
      this.pending = new Map();      // client_id -> {clientId, text, ts, state, error, order}
      this.rows = new Map();         // key -> <li>
      // The long-poll's cursors: the last seq seen, and the versions of who types and of the
      // read markers (always sent: a change ends the poll).
      this.cursor = { after: null, typingVersion: 0, readVersion: 0 };
      this.partnerRead = 0;          // the peer's read marker
      this.myRead = 0;               // ours, as the server has it
      this.reading = false;          // a POST .../read in flight
      this.seenRow = null;           // the row of ours that shows "Seen"
      this.typing = [];
      this.loaded = false;
      this.hasMore = false;
      this.poller = null;
      this.sending = Promise.resolve();
      this.typingChain = Promise.resolve();
    }

    get after() {
      return this.cursor.after;
    }

    set after(seq) {
      this.cursor.after = seq;
    }

    get oldest() {
      let min = Infinity;
      for (const seq of this.messages.keys()) min = Math.min(min, seq);
      return min;
    }
  }

  function isViewing(conv) {
    return conv === current && document.visibilityState === "visible" &&
      (!NARROW.matches || $("layout").dataset.view === "chat");
  }

  function openConversation(peer) {
    if (!USER_RE.test(peer) || !session || peer === session.user) return;
    if (current && current.peer !== peer) {
      stopTyping(current);
      if (current.poller) current.poller.abort();
      current.poller = null;
    }
    let conv = conversations.get(peer);
    if (!conv) {
      conv = new Conversation(peer);
      conversations.set(peer, conv);
    }
    const switching = current !== conv;
    current = conv;
    touchContact(peer);
    const c = contacts.find((x) => x.name === peer);
    if (c) c.unread = 0;
    renderContacts();

    $("chat-empty").hidden = true;
    $("chat-pane").hidden = false;
    $("layout").dataset.view = "chat";
    $("chat-title").textContent = peer;
    avatar($("peer-avatar"), peer);
    $("composer-label").textContent = `Message to ${peer}`;
    if (switching) {
      const list = $("message-list");
      list.setAttribute("aria-busy", "true");
      list.replaceChildren(...[...conv.rows.values()].sort(byOrder));
      for (const row of list.children) decorate(row);
      list.removeAttribute("aria-busy");
      renderHistoryControls(conv);
      renderTyping(conv);
      scrollToBottom();
      $("composer-text").value = conv.draft || "";
      autoGrow();
    }
    renderStatus();
    renderBlocked();
    renderPresence();
    refreshPresence();
    if (!conv.poller) {
      const poller = childController(sessionCtl.signal);
      conv.poller = poller;
      runConversation(conv, poller.signal).finally(() => {
        if (conv.poller === poller) conv.poller = null;
      });
    }
    // On a phone, focusing the box would pop the keyboard over the conversation.
    if (!NARROW.matches) $("composer-text").focus({ preventScroll: true });
  }

  function closeConversationView() {
    $("layout").dataset.view = "list";
    const back = current && document.querySelector(`.contact[data-name="${CSS.escape(current.peer)}"]`);
    (back || $("newchat-user")).focus();
  }

  async function runConversation(conv, signal) {
    while (!signal.aborted) {
      try {
        if (!conv.loaded) {
          await loadLatest(conv, signal);
          continue;
        }
        const end = await client.watchConversation(conv.cid, conv.cursor, {
          onTrouble: () => setTyping(conv, []),
          onEvents: (body) => {
            for (const m of body.events) addMessage(conv, m, true);
            // The partner just wrote: ask again if the page still shows them away.
            const p = presence.get(conv.peer);
            if (conv === current && (!p || !p.online) && body.events.some((m) => m.sender === conv.peer)) {
              refreshPresence();
            }
            setTyping(conv, body.typing.filter((u) => u !== session.user));
            if (body.read) {
              conv.partnerRead = body.read[conv.peer] || 0;
              conv.myRead = Math.max(conv.myRead, body.read[session.user] || 0);
            }
            renderSeen(conv);
            markRead(conv);
          },
        }, signal);
        if (end === "reset") {
          // Our cursor is beyond the stream's last message: start again from its history.
          conv.loaded = false;
          continue;
        }
        if (end) showChatError(conv, errorText(end, `The conversation cannot be read (HTTP ${end.status}).`));
        return;
      } catch (e) {
        if (e instanceof Aborted || signal.aborted) return;
        await sleep(1000, signal).catch(() => {});
      }
    }
  }

  async function loadLatest(conv, signal) {
    const res = await client.history(conv.cid, { limit: HISTORY_PAGE, signal });
    if (res.status !== 200) {
      showChatError(conv, errorText(res, `The conversation cannot be read (HTTP ${res.status}).`));
      throw new Aborted();
    }
    let last = 0;
    for (const m of res.data.messages) {
      addMessage(conv, m, false);
      last = Math.max(last, m.seq);
    }
    const page = res.data.messages;
    if (!page.length || page[0].seq <= conv.oldest) conv.hasMore = res.data.has_more;
    conv.after = last;
    conv.loaded = true;
    renderHistoryControls(conv);
  }

  async function loadOlder(conv) {
    const button = $("older");
    if (!Number.isFinite(conv.oldest)) return;
    button.disabled = true;
    button.textContent = "Loading…";
    const box = $("messages");
    const fromBottom = box.scrollHeight - box.scrollTop;
    try {
      const res = await client.history(conv.cid, {
        before: conv.oldest, limit: HISTORY_PAGE, signal: sessionCtl.signal, deadline: 20000,
      });
      if (res.status === 200) {
        for (const m of res.data.messages) addMessage(conv, m, false);
        conv.hasMore = res.data.has_more;
      }
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      toast({ type: "other", text: [e.message === "no node answered" ? "Older messages could not be loaded. Try again." : e.message] });
    } finally {
      button.disabled = false;
      button.textContent = "Older messages";
      if (conv === current) {
        renderHistoryControls(conv);
        box.scrollTop = box.scrollHeight - fromBottom;
      }
    }
  }

  function renderHistoryControls(conv) {
    if (conv !== current) return;
    $("older").hidden = !conv.hasMore;
    $("beginning").hidden = conv.hasMore || !conv.loaded;
  }

  function showChatError(conv, message) {
    if (conv !== current) return;
    toast({ type: "other", text: [message] });
  }

  // ---- messages on screen

  function byOrder(a, b) {
    return Number(a.dataset.order) - Number(b.dataset.order);
  }

  /** Add a message once (by seq); `live` ones may bump the unread count. */
  function addMessage(conv, m, live) {
    if (conv.messages.has(m.seq)) return;
    conv.messages.set(m.seq, m);
    const mine = m.sender === session.user;
    if (mine && m.client_id && conv.pending.has(m.client_id)) {
      conv.pending.delete(m.client_id);
      removeRow(conv, "p" + m.client_id);
    }
    const row = messageRow(m.seq, m.sender, m.text, m.ts);
    placeRow(conv, "s" + m.seq, row, mine && live);
    touchContact(conv.peer, (mine ? "You: " : "") + m.text.slice(0, 80), m.ts);
  }

  function messageRow(order, sender, text, ts) {
    const mine = sender === session.user;
    return h("li", { class: "msg-row", dataset: { order: String(order), sender, ts: String(ts) } },
      h("p", { class: "day", hidden: true }),
      h("div", { class: "msg" + (mine ? " mine" : "") },
        h("span", { class: "sr-only", text: mine ? "You said:" : `${sender} said:` }),
        h("div", { class: "bubble", text }),
        h("div", { class: "meta" }, h("time", { datetime: new Date(ts * 1000).toISOString(), text: clock(ts) }))));
  }

  function placeRow(conv, key, row, forceScroll) {
    conv.rows.set(key, row);
    if (conv !== current) return;
    const list = $("message-list");
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
    const order = Number(row.dataset.order);
    let before = null;
    for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
      if (Number(node.dataset.order) < order) break;
      before = node;
    }
    list.insertBefore(row, before);
    decorate(row);
    if (row.nextElementSibling) decorate(row.nextElementSibling);
    if (atBottom || forceScroll) {
      scrollToBottom();
    } else if (!before) {
      $("jump").hidden = false;
    }
  }

  function removeRow(conv, key) {
    const row = conv.rows.get(key);
    if (!row) return;
    conv.rows.delete(key);
    const next = row.nextElementSibling;
    row.remove();
    if (next) decorate(next);
  }

  /** Day separators, grouping of consecutive messages, one time stamp per minute. */
  function decorate(row) {
    const prev = row.previousElementSibling;
    const ts = Number(row.dataset.ts);
    const day = dayLabel(ts);
    const newDay = !prev || dayLabel(Number(prev.dataset.ts)) !== day;
    const dayNode = row.querySelector(".day");
    dayNode.hidden = !newDay;
    dayNode.textContent = newDay ? day : "";
    const cont = !!prev && !newDay && prev.dataset.sender === row.dataset.sender &&
      ts - Number(prev.dataset.ts) < 300;
    row.querySelector(".msg").classList.toggle("cont", cont);
    if (prev) prev.classList.toggle("timeless", cont && clock(ts) === clock(Number(prev.dataset.ts)));
  }

  function scrollToBottom() {
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
    $("jump").hidden = true;
  }

  // ---- read receipts

  /** Tell the server we have read up to the last message, while the conversation is in view. */
  function markRead(conv) {
    if (!isViewing(conv) || conv.reading || !(conv.after > conv.myRead)) return;
    conv.reading = true;
    const seq = conv.after;
    client.read(conv.cid, seq, { signal: sessionCtl && sessionCtl.signal }).then((res) => {
      if (res.status === 200) conv.myRead = Math.max(conv.myRead, res.data.read_seq);
    }).catch(() => {}).finally(() => { conv.reading = false; });
  }

  /** "Seen" under our last message once the peer's read marker has reached it. */
  function renderSeen(conv) {
    let last = 0;
    for (const [seq, m] of conv.messages) if (m.sender === session.user && seq > last) last = seq;
    const row = last && conv.partnerRead >= last ? conv.rows.get("s" + last) : null;
    if (row === conv.seenRow) return;
    if (conv.seenRow) {
      const old = conv.seenRow.querySelector(".seen");
      if (old) old.remove();
    }
    conv.seenRow = row || null;
    if (row) row.querySelector(".meta").append(h("span", { class: "seen", text: "Seen" }));
  }

  // ---- typing, theirs

  function setTyping(conv, users) {
    const same = users.length === conv.typing.length && users.every((u, i) => u === conv.typing[i]);
    conv.typing = users;
    if (!same) {
      renderTyping(conv);
      renderContacts();
    }
  }

  function renderTyping(conv) {
    if (conv !== current) return;
    const node = $("typing");
    if (conv.typing.length) {
      node.replaceChildren(`${conv.typing.join(", ")} is typing`,
        h("span", { class: "dots", "aria-hidden": "true" }, h("span"), h("span"), h("span")));
    } else {
      node.replaceChildren();
    }
  }

  // ---- typing, ours

  const typing = { conv: null, refresh: null, idle: null };

  function postTyping(conv, on) {
    conv.typingChain = conv.typingChain.then(() =>
      client.typing(conv.cid, on, { signal: sessionCtl && sessionCtl.signal })).catch(() => {});
  }

  function userTyped() {
    const conv = current;
    if (!conv) return;
    if (!$("composer-text").value.trim()) {
      stopTyping(conv);
      return;
    }
    if (typing.conv !== conv) {
      stopTyping(typing.conv);
      typing.conv = conv;
      postTyping(conv, true);
      typing.refresh = setInterval(() => postTyping(conv, true), TYPING_REFRESH);
    }
    clearTimeout(typing.idle);
    typing.idle = setTimeout(() => stopTyping(conv), TYPING_IDLE);
  }

  function stopTyping(conv) {
    if (!conv || typing.conv !== conv) return;
    clearInterval(typing.refresh);
    clearTimeout(typing.idle);
    typing.conv = null;
    postTyping(conv, false);
  }

  // ---- sending

  function send(conv, text) {
    const p = { clientId: randomId(), text, ts: Date.now() / 1000, state: "sending", error: "" };
    conv.pending.set(p.clientId, p);
    p.order = 1e15 + (pendingOrder += 1);
    const row = messageRow(p.order, session.user, text, p.ts);
    row.classList.add("pending-row");
    placeRow(conv, "p" + p.clientId, row, true);
    renderPending(conv, p);
    deliver(conv, p);
  }

  function deliver(conv, p) {
    conv.sending = conv.sending.then(async () => {
      if (!conv.pending.has(p.clientId)) return;
      try {
        const res = await client.send(conv.cid, p.text, {
          clientId: p.clientId, signal: sessionCtl.signal,
          onTrouble: () => {
            if (p.state !== "retrying") {
              p.state = "retrying";
              renderPending(conv, p);
            }
          },
        });
        if ((res.status === 201 || res.status === 200) && res.data && res.data.message) {
          addMessage(conv, res.data.message, true);
        } else {
          p.state = "failed";
          p.error = res.status === 403 && res.data && res.data.error && res.data.error.code === "blocked"
            ? (refreshPresence(), "this conversation is blocked")
            : errorText(res, `HTTP ${res.status}`);
          renderPending(conv, p);
        }
      } catch (e) {
        // aborted: signed out
      }
    });
  }

  function renderPending(conv, p) {
    const row = conv.rows.get("p" + p.clientId);
    if (!row) return;
    const msg = row.querySelector(".msg");
    msg.classList.toggle("pending", p.state !== "failed");
    msg.classList.toggle("failed", p.state === "failed");
    const meta = row.querySelector(".meta");
    if (p.state === "failed") {
      meta.replaceChildren(`Not sent: ${p.error}. `,
        h("button", { type: "button", text: "Retry", onclick: () => {
          p.state = "sending";
          renderPending(conv, p);
          deliver(conv, p);
        } }));
    } else {
      meta.replaceChildren(p.state === "retrying" ? "Reconnecting…" : "Sending…");
    }
  }

  // ------------------------------------------------------------------ inbox

  const notifications = [];      // newest first
  const notifSeen = new Set();   // seqs
  let unseen = 0;

  function runInbox(signal) {
    return client.watchInbox({ after: null }, {
      onEvents: (events, { live }) => {
        for (const e of events) addNotification(e, live);
      },
    }, signal, { backlog: INBOX_BACKLOG });
  }

  function describe(e) {
    const from = e.from || "Someone";
    const data = e.data || {};
    switch (e.type) {
      case "message":
        return { text: [h("b", { text: from }), " sent you a message"], preview: String(data.preview || "") };
      case "flirt": {
        const hearts = Math.max(1, Math.min(5, Number(data.hearts) || 1));
        return { text: [h("b", { text: from }), " sent you a flirt"], preview: "♥".repeat(hearts) };
      }
      case "visit":
        return { text: [h("b", { text: from }), " visited your profile"], preview: "" };
      default:
        return { text: [`New ${e.type}`, e.from ? " from " : "", e.from ? h("b", { text: e.from }) : ""], preview: "" };
    }
  }

  function addNotification(e, live) {
    if (notifSeen.has(e.seq)) return;
    notifSeen.add(e.seq);
    const n = { seq: e.seq, type: e.type, from: e.from, ts: e.ts, data: e.data || {}, unseen: live };
    notifications.push(n);
    notifications.sort((a, b) => b.seq - a.seq);
    if (notifications.length > 100) notifications.length = 100;

    let quiet = false;
    if (e.type === "message" && e.from && USER_RE.test(e.from)) {
      const conv = conversations.get(e.from);
      const viewing = conv && isViewing(conv);
      quiet = viewing;
      touchContact(e.from, String(n.data.preview || ""), e.ts, live && !viewing ? 1 : 0);
    }
    if (live && quiet) n.unseen = false;
    if (n.unseen) unseen += 1;
    if (live && !quiet && $("notif-panel").hidden) {
      const d = describe(n);
      toast({ type: n.type, text: d.text, preview: d.preview, open: n.from && USER_RE.test(n.from) ? n.from : null });
    }
    renderNotifications();
  }

  /** One entry per conversation for messages (newest first, with a count); others one each. */
  function groupNotifications() {
    const entries = [];
    const byPeer = new Map();
    for (const n of notifications) {
      if (n.type === "message" && n.from) {
        const g = byPeer.get(n.from);
        if (g) {
          g.count += 1;
          g.unseen = g.unseen || n.unseen;
          continue;
        }
        const entry = { ...n, count: 1 };
        byPeer.set(n.from, entry);
        entries.push(entry);
      } else {
        entries.push({ ...n, count: 1 });
      }
    }
    return entries;
  }

  function renderNotifications() {
    const list = $("notif-list");
    $("notif-empty").hidden = notifications.length > 0;
    list.replaceChildren(...groupNotifications().map((n) => {
      const d = describe(n);
      if (n.count > 1) d.text = [h("b", { text: n.from }), ` sent you ${n.count} messages`];
      const body = h("span", { class: "notif-body" },
        h("span", { class: "notif-text" }, d.text),
        d.preview ? h("span", { class: "notif-preview", text: d.preview }) : null,
        h("span", { class: "notif-time", text: ago(n.ts) }));
      const canOpen = n.from && USER_RE.test(n.from) && n.from !== session.user;
      return h("li", { class: "notif" + (n.unseen ? " unseen" : ""), dataset: { type: n.type, count: String(n.count) } },
        icon(n.type),
        canOpen ? h("button", { class: "notif-open", type: "button", onclick: () => { closePanel(); openConversation(n.from); } }, body) : body);
    }));
    const badge = $("notif-badge");
    badge.hidden = unseen === 0;
    badge.textContent = unseen > 99 ? "99+" : String(unseen);
    $("notif-label").textContent = unseen ? `Notifications, ${unseen} new` : "Notifications";
    document.title = unseen ? `(${unseen}) hpchat` : "hpchat";
  }

  function openPanel() {
    $("toasts").replaceChildren();   // the panel lists them all
    $("notif-panel").hidden = false;
    $("notif-button").setAttribute("aria-expanded", "true");
    renderNotifications();
    $("notif-close").focus();
  }

  function closePanel() {
    if ($("notif-panel").hidden) return;
    $("notif-panel").hidden = true;
    $("notif-button").setAttribute("aria-expanded", "false");
    for (const n of notifications) n.unseen = false;
    unseen = 0;
    renderNotifications();
  }

  function toast({ type, text, preview, open }) {
    const content = [icon(type), h("span", { class: "notif-body" },
      h("span", { class: "notif-text" }, text),
      preview ? h("span", { class: "notif-preview", text: preview }) : null)];
    const node = open
      ? h("button", { class: "toast", type: "button", dataset: { type }, onclick: () => { node.remove(); openConversation(open); } }, content)
      : h("div", { class: "toast", dataset: { type } }, content);
    $("toasts").append(node);
    while ($("toasts").children.length > 3) $("toasts").firstElementChild.remove();
    setTimeout(() => node.remove(), 7000);
  }

  // ------------------------------------------------------------------ composer

  function autoGrow() {
    const t = $("composer-text");
    t.style.height = "auto";
    t.style.height = Math.min(t.scrollHeight + 2, 150) + "px";
  }

  function submitComposer() {
    const t = $("composer-text");
    const text = t.value.replace(/\s+$/, "");
    if (!current || !text.trim() || blocked.has(current.peer)) return;
    stopTyping(current);
    send(current, text);
    t.value = "";
    current.draft = "";
    autoGrow();
    t.focus();
  }

  // ------------------------------------------------------------------ start

  function start() {
    sessionCtl = new AbortController();
    client.user = session.user;
    client.token = session.token;
    $("signin").hidden = true;
    $("app").hidden = false;
    $("me-name").textContent = session.user;
    avatar($("me-avatar"), session.user);
    $("me-avatar").title = `Signed in as ${session.user}`;
    loadContacts();
    renderContacts();
    renderNotifications();
    renderStatus();
    $("chat-empty").hidden = false;
    $("chat-pane").hidden = true;
    $("layout").dataset.view = "list";
    client.refresh();
    runInbox(sessionCtl.signal);
    loadConversationList(sessionCtl.signal);
    loadBlocks(sessionCtl.signal);
    clearInterval(presenceTimer);
    presenceTimer = setInterval(refreshPresence, 20000);
    const peer = params.get("with");
    if (peer && USER_RE.test(peer) && peer !== session.user) openConversation(peer);
    else $("newchat-user").focus();
  }

  function wire() {
    $("signin-api").textContent = API;
    $("signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      signIn($("signin-user").value.trim());
    });
    $("signout").addEventListener("click", () => signOut(""));
    $("token-submit").addEventListener("click", signInWithToken);
    $("block").addEventListener("click", toggleBlock);

    $("newchat").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("newchat-user");
      const name = input.value.trim();
      const error = $("newchat-error");
      if (!USER_RE.test(name)) {
        error.textContent = "User names are 1 to 64 letters, digits, “_” or “-”.";
      } else if (name === session.user) {
        error.textContent = "That is you. Pick someone else.";
      } else {
        error.textContent = "";
        input.value = "";
        openConversation(name);
        return;
      }
      input.focus();
    });

    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      submitComposer();
    });
    const text = $("composer-text");
    text.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        submitComposer();
      }
    });
    text.addEventListener("input", () => {
      autoGrow();
      if (current) current.draft = text.value;
      userTyped();
    });
    text.addEventListener("blur", () => stopTyping(current));

    $("older").addEventListener("click", () => current && loadOlder(current));
    $("jump").addEventListener("click", scrollToBottom);
    $("messages").addEventListener("scroll", () => {
      const box = $("messages");
      if (box.scrollHeight - box.scrollTop - box.clientHeight < 60) $("jump").hidden = true;
    });
    $("back").addEventListener("click", closeConversationView);

    $("notif-button").addEventListener("click", () => ($("notif-panel").hidden ? openPanel() : closePanel()));
    $("notif-close").addEventListener("click", () => {
      closePanel();
      $("notif-button").focus();
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !$("notif-panel").hidden) {
        closePanel();
        $("notif-button").focus();
      }
    });
    document.addEventListener("click", (e) => {
      if (!$("notif-panel").hidden && !$("notif-panel").contains(e.target) && !$("notif-button").contains(e.target)) closePanel();
    });
    document.addEventListener("visibilitychange", () => {
      if (current && isViewing(current)) {
        markRead(current);
        const c = contacts.find((x) => x.name === current.peer);
        if (c && c.unread) {
          c.unread = 0;
          renderContacts();
        }
      }
    });
    setInterval(() => {
      if (session && !$("notif-panel").hidden) renderNotifications();
    }, 30000);
  }

  wire();
  session = loadSession();
  if (session) start();
  else {
    $("signin").hidden = false;
    $("signin-user").focus();
  }
})();
