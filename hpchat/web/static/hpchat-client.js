/*
 * hpchat-client.js: a small client for the hpchat API, as an ES module with no dependencies
 * and no build step (import it from a <script type="module">).
 *
 *   import { HpchatClient } from "./hpchat-client.js";
 *   const client = new HpchatClient({ nodes: ["http://n1:8080", "http://n2:8080"] });
 *   await client.devLogin("alice");                 // or new HpchatClient({ nodes, user, token })
 *   const cid = client.conversationId("bob");
 *   await client.send(cid, "Hi bob");
 *   client.watchConversation(cid, {}, { onEvents: (body) => console.log(body.events) }, signal);
 *
 * Every stream (a conversation, an inbox) has a Route: the node that last answered for it. A
 * call goes there and follows a 307 to the owner; the node that finally answered is remembered.
 * The token travels as ?access_token= (browsers drop the Authorization header on a redirect to
 * another origin) and bodies go as text/plain, so calls are CORS simple requests. When a node
 * does not answer, the next one of the list (and of GET /v1/cluster) is tried, with exponential
 * backoff after each full round; 503 and 429 are retried after their Retry-After.
 *
 * Long-polls to a node not yet confirmed for their stream are made with timeout=0 (a probe);
 * those to the confirmed owner do not follow redirects, so a stream that moved ends the poll at
 * once and the next one probes again. Cursors (after, typing_version, read_version) are kept in
 * an object the caller owns, so they survive failover and restarts of a loop.
 *
 * Where the browser has EventSource, a stream confirmed on its owner is followed over Server-Sent
 * Events instead (GET .../stream?after=N): one request for as long as it stays open. When it
 * ends (the owner moved or stops, the network failed) a probe long-poll settles the route and
 * catches up, and a new stream starts from the cursor. After MAX_STREAM_FAILURES streams in a
 * row that never opened, that watch keeps to long-polls. `transports` tells, per stream, which
 * of "sse" and "poll" was used last.
 */

/** EventSource streams in a row that may fail to open before a watch keeps to long-polls. */
export const MAX_STREAM_FAILURES = 3;

export class Aborted extends Error {}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const USER_RE = /^[A-Za-z0-9_-]{1,64}$/;

export function normalizeBase(url) {
  const base = typeof location === "undefined" ? undefined : location.href;
  const u = new URL(url, base);
  return (u.origin + u.pathname).replace(/\/+$/, "");
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(new Aborted());
    const timer = setTimeout(done, ms);
    function done() {
      if (signal) signal.removeEventListener("abort", stop);
      resolve();
    }
    function stop() {
      clearTimeout(timer);
      reject(new Aborted());
    }
    if (signal) signal.addEventListener("abort", stop, { once: true });
  });
}

export function randomId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return "c" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Pause after the `round`th full round of failed nodes: 125-250 ms, doubling to 0.75-1.5 s. */
function backoff(round) {
  const ms = Math.min(1500, 250 * 2 ** round);
  return ms / 2 + Math.random() * ms / 2;
}

function retryAfter(res, fallback) {
  const s = Number(res.headers && res.headers.get("retry-after"));
  return Number.isFinite(s) && s > 0 ? s : fallback;
}

/** Where a stream was last served. */
export class Route {
  constructor(stream, first) {
    this.stream = stream;
    this.base = null;      // the node that last answered for this stream (confirmed)
    this.next = first;     // where to try when none is confirmed
    this.failing = false;
  }
}

export class HpchatClient {
  /**
   * nodes: API base URLs (the first is tried first); user, token: a session, if one exists.
   * onStatus(): a route started or stopped failing, or moved; onUnauthorized(): a 401.
   */
  constructor({ nodes, user = null, token = null, pollTimeout = 25, callTimeout = 12000,
    onStatus = () => {}, onUnauthorized = () => {}, eventSource = true }) {
    this.bases = nodes.map(normalizeBase);
    this.user = user;
    this.token = token;
    this.pollTimeout = pollTimeout;
    this.callTimeout = callTimeout;
    this.onStatus = onStatus;
    this.onUnauthorized = onUnauthorized;
    this.routes = new Map();
    this._viewing = null;
    this.eventSource = eventSource && typeof EventSource !== "undefined";
    this.transports = {};
  }

  // ---- nodes and routes

  learn(view) {
    for (const url of Object.values((view && view.nodes) || {})) {
      const base = normalizeBase(url);
      if (!this.bases.includes(base)) this.bases.push(base);
    }
  }

  after(base) {
    const i = this.bases.indexOf(base);
    return this.bases[(i + 1) % this.bases.length];
  }

  /** Ask any answering node for the cluster view (one request at a time). */
  refresh() {
    if (this._viewing) return this._viewing;
    this._viewing = (async () => {
      for (const base of this.bases.slice()) {
        try {
          const res = await this.fetchOnce(base, "GET", "/v1/cluster", { timeout: 3000, anonymous: true });
          if (res.status === 200) return this.learn(res.data);
        } catch (e) {
          // the next one
        }
      }
    })().finally(() => { this._viewing = null; });
    return this._viewing;
  }

  route(stream) {
    if (!this.routes.has(stream)) this.routes.set(stream, new Route(stream, this.bases[0]));
    return this.routes.get(stream);
  }

  reset() {
    this.routes.clear();
    this.user = null;
    this.token = null;
  }

  conversationId(peer, user = this.user) {
    // User ids are ASCII, so UTF-16 order is byte order.
    return user < peer ? `dm:${user}:${peer}` : `dm:${peer}:${user}`;
  }

  // ---- HTTP

  /** One HTTP exchange; rejects on network errors, timeouts and aborts. */
  async fetchOnce(base, method, path, opts = {}) {
    let url = base + path;
    if (!opts.anonymous) {
      url += (path.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(this.token);
    }
    const ctl = new AbortController();
    const stop = () => ctl.abort();
    if (opts.signal) {
      if (opts.signal.aborted) throw new Aborted();
      opts.signal.addEventListener("abort", stop, { once: true });
    }
    const timer = setTimeout(stop, opts.timeout || this.callTimeout);
    try {
      const response = await fetch(url, {
        method,
        body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
        redirect: opts.manual ? "manual" : "follow",
        credentials: "omit",
        cache: "no-store",
        signal: ctl.signal,
      });
      if (response.type === "opaqueredirect") return { status: 307, moved: true, data: null, headers: response.headers, base };
      const text = await response.text();
      let data = null;
      try {
        data = text ? JSON.parse(text) : null;
      } catch (e) {
        data = null;
      }
      const at = response.url.indexOf("/v1/");
      return { status: response.status, data, headers: response.headers, base: at > 0 ? response.url.slice(0, at) : base };
    } catch (e) {
      if (opts.signal && opts.signal.aborted) throw new Aborted();
      throw e;
    } finally {
      clearTimeout(timer);
      if (opts.signal) opts.signal.removeEventListener("abort", stop);
    }
  }

  _setFailing(route, failing, opts) {
    if (failing && opts.onTrouble) opts.onTrouble();
    if (route.failing === failing) return;
    route.failing = failing;
    this.onStatus(route);
  }

  /**
   * Call the API for `stream` (a name or a Route) until some node answers: follows redirects,
   * moves to the next node on network errors, waits out 503 and 429. Resolves with
   * {status, data, headers, base, moved} for any other answer; rejects with Aborted when
   * aborted or on 401, with ApiError after `opts.deadline` ms.
   */
  async call(stream, method, path, opts = {}) {
    const route = typeof stream === "string" ? this.route(stream) : stream;
    const started = Date.now();
    const late = () => Date.now() - started > (opts.deadline || Infinity);
    let failures = 0;
    for (;;) {
      const base = route.base || route.next;
      let res;
      try {
        res = await this.fetchOnce(base, method, path, opts);
      } catch (e) {
        if (e instanceof Aborted) throw e;
        // Refused or reset (a dead node), timed out, or a redirect the browser would not
        // follow: the next node we know of.
        failures += 1;
        route.base = null;
        route.next = this.after(base);
        this._setFailing(route, true, opts);
        if (late()) throw new ApiError(0, "unreachable", "no node answered");
        if (failures % this.bases.length === 0) {
          this.refresh();
          await sleep(backoff(failures / this.bases.length - 1), opts.signal);
        }
        continue;
      }
      if (res.status === 503) {
        // Ownership is being settled (or the node is shutting down): on another node every
        // other time.
        failures += 1;
        this._setFailing(route, true, opts);
        if (late()) throw new ApiError(503, "unavailable", "the service is unavailable");
        route.base = null;
        route.next = failures % 2 === 0 ? this.after(base) : base;
        const wait = retryAfter(res, 1) * 1000;
        await sleep(Math.min(3000, Math.max(250, wait * (0.5 + Math.random() * 0.5))), opts.signal);
        continue;
      }
      if (res.status === 429 && opts.retryLimited !== false) {
        // Too fast: the same node, after the time it asks for.
        if (late()) return res;
        await sleep(Math.min(10000, retryAfter(res, 1) * 1000), opts.signal);
        continue;
      }
      if (res.moved) {
        // A long-poll's stream moved to another node: the caller probes again.
        route.base = null;
        route.next = base;
        return res;
      }
      if (res.status === 401) {
        this.onUnauthorized();
        throw new Aborted();
      }
      const changed = route.base !== res.base;
      route.base = res.base;
      route.next = res.base;
      this._setFailing(route, false, opts);
      if (changed) this.onStatus(route);
      return res;
    }
  }

  // ---- signing in

  /** A development token for `user` (where [auth] dev_login = true), tried on every node. */
  async devLogin(user, { attempts = 4 } = {}) {
    for (let attempt = 0; attempt < attempts; attempt++) {
      for (const base of this.bases.slice()) {
        let res;
        try {
          res = await this.fetchOnce(base, "POST", "/v1/dev/login", { body: { user }, anonymous: true, timeout: 5000 });
        } catch (e) {
          continue;
        }
        if (res.status === 200 && res.data && res.data.token) {
          this.user = res.data.user;
          this.token = res.data.token;
        }
        return res;
      }
      await sleep(backoff(attempt));
    }
    return null;
  }

  // ---- event streams

  /**
   * Follow `path` on the route's confirmed node over EventSource from seq `after`, giving each
   * event to onEvent(type, data) until the stream ends or `signal` aborts. Resolves with
   * {aborted, opened}. The stream is closed at its first error: the caller settles the route
   * (a probe long-poll) and opens a new one from its cursor.
   */
  streamOnce(route, path, after, types, onEvent, signal) {
    return new Promise((resolve) => {
      const q = new URLSearchParams({ access_token: this.token });
      if (after !== null && after !== undefined) q.set("after", String(after));
      const source = new EventSource(`${route.base}${path}?${q}`);
      this.transports[route.stream] = "sse";
      let opened = false;
      let done = false;
      const finish = (aborted) => {
        if (done) return;
        done = true;
        source.close();
        if (signal) signal.removeEventListener("abort", abort);
        resolve({ aborted, opened });
      };
      const abort = () => finish(true);
      if (signal) {
        if (signal.aborted) return finish(true);
        signal.addEventListener("abort", abort, { once: true });
      }
      source.onopen = () => { opened = true; };
      source.onerror = () => finish(false);
      for (const type of types) {
        source.addEventListener(type, (ev) => {
          let data;
          try {
            data = JSON.parse(ev.data);
          } catch (e) {
            return;
          }
          try {
            onEvent(type, data);
          } catch (e) {
            console.error(e);
          }
        });
      }
    });
  }

  _streams(route, cursor, failures) {
    return this.eventSource && failures < MAX_STREAM_FAILURES && route.base
      && cursor.after !== null && cursor.after !== undefined;
  }

  /** After a stream ended: the next long-poll is a probe, to the same node first. */
  _streamEnded(route, result, handlers) {
    if (!result.opened && handlers.onTrouble) handlers.onTrouble();
    route.next = route.base;
    route.base = null;
  }

  // ---- long-polls

  /**
   * Follow a conversation: `cursor` ({after, typingVersion, readVersion}) is updated in place;
   * handlers.onEvents(body) gets each answer (a long-poll's, or one made of a stream's event).
   * `after` null means "from now on". Returns when aborted, with "reset" when the cursor is
   * beyond the stream (409), or with the answer of any other error.
   */
  async watchConversation(cid, cursor, handlers = {}, signal) {
    const route = this.route(cid);
    let failures = 0;
    let typing = [];
    const onEvent = (type, data) => {
      const body = { events: [], last_seq: cursor.after, typing, typing_version: cursor.typingVersion };
      if (type === "message") {
        if (data.seq <= cursor.after) return;
        cursor.after = data.seq;
        body.events = [data];
        body.last_seq = data.seq;
      } else if (type === "typing") {
        typing = data.typing;
        cursor.typingVersion = data.typing_version;
        Object.assign(body, data);
      } else if (type === "read") {
        cursor.readVersion = data.read_version;
        Object.assign(body, data);
      }
      (handlers.onEvents || (() => {}))(body);
    };
    while (!signal || !signal.aborted) {
      if (this._streams(route, cursor, failures)) {
        const result = await this.streamOnce(route, `/v1/conversations/${cid}/stream`, cursor.after,
          ["message", "typing", "read"], onEvent, signal);
        if (result.aborted) return undefined;
        failures = result.opened ? 0 : failures + 1;
        this._streamEnded(route, result, handlers);
        continue;
      }
      try {
        this.transports[cid] = "poll";
        const wait = route.base && cursor.after !== null && cursor.after !== undefined ? this.pollTimeout : 0;
        const q = new URLSearchParams({
          typing_version: String(cursor.typingVersion || 0), read_version: String(cursor.readVersion || 0),
          timeout: String(wait),
        });
        if (cursor.after !== null && cursor.after !== undefined) q.set("after", String(cursor.after));
        const res = await this.call(route, "GET", `/v1/conversations/${cid}/events?${q}`, {
          signal, timeout: wait * 1000 + 10000, manual: wait > 0, onTrouble: handlers.onTrouble,
        });
        if (res.moved) continue;
        if (res.status === 409) return "reset";
        if (res.status !== 200) return res;
        const body = res.data;
        const first = cursor.after === null || cursor.after === undefined;
        if (body.events.length) cursor.after = Math.max(cursor.after || 0, body.events[body.events.length - 1].seq);
        else cursor.after = Math.max(cursor.after || 0, body.last_seq);
        cursor.typingVersion = body.typing_version;
        typing = body.typing;
        if (body.read) cursor.readVersion = body.read_version;
        if (!first || body.events.length) await (handlers.onEvents || (() => {}))(body);
      } catch (e) {
        if (e instanceof Aborted || (signal && signal.aborted)) return undefined;
        await sleep(1000, signal).catch(() => {});
      }
    }
    return undefined;
  }

  /**
   * Follow the inbox: `cursor.after` null starts at the last `backlog` notifications, given to
   * handlers.onEvents(events, {live: false}); newer ones come with {live: true}.
   */
  async watchInbox(cursor, handlers = {}, signal, { backlog = 20 } = {}) {
    const route = this.route("inbox:" + this.user);
    let initial = null;
    let failures = 0;
    const onEvent = (type, e) => {
      if (e.seq <= cursor.after) return;
      cursor.after = e.seq;
      if (handlers.onEvents) handlers.onEvents([e], { live: initial === null || e.seq > initial });
    };
    while (!signal || !signal.aborted) {
      if (this._streams(route, cursor, failures)) {
        const result = await this.streamOnce(route, "/v1/inbox/stream", cursor.after,
          ["notification"], onEvent, signal);
        if (result.aborted) return;
        failures = result.opened ? 0 : failures + 1;
        this._streamEnded(route, result, handlers);
        continue;
      }
      try {
        this.transports[route.stream] = "poll";
        const fresh = cursor.after === null || cursor.after === undefined;
        const wait = !fresh && route.base ? this.pollTimeout : 0;
        const q = new URLSearchParams({ timeout: String(wait) });
        if (!fresh) q.set("after", String(cursor.after));
        const res = await this.call(route, "GET", `/v1/inbox/events?${q}`, {
          signal, timeout: wait * 1000 + 10000, manual: wait > 0, onTrouble: handlers.onTrouble,
        });
        if (res.moved) continue;
        if (res.status === 409) {
          cursor.after = null;
          continue;
        }
        if (res.status !== 200) {
          await sleep(5000, signal);
          continue;
        }
        const body = res.data;
        if (fresh) {
          initial = body.last_seq;
          cursor.after = Math.max(0, body.last_seq - backlog);
          continue;
        }
        if (body.events.length) {
          const events = body.events;
          cursor.after = events[events.length - 1].seq;
          const old = events.filter((e) => initial !== null && e.seq <= initial);
          const live = events.filter((e) => initial === null || e.seq > initial);
          if (old.length) handlers.onEvents && handlers.onEvents(old, { live: false });
          if (live.length) handlers.onEvents && handlers.onEvents(live, { live: true });
        } else {
          cursor.after = Math.max(cursor.after, body.last_seq);
        }
      } catch (e) {
        if (e instanceof Aborted || (signal && signal.aborted)) return;
        await sleep(1000, signal).catch(() => {});
      }
    }
  }

  // ---- one-off calls

  history(cid, { before = null, limit = 30, signal, deadline } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before !== null) q.set("before", String(before));
    return this.call(cid, "GET", `/v1/conversations/${cid}/messages?${q}`, { signal, deadline });
  }

  /**
   * Send `text` with `clientId` (made up when not given): re-sent with the same id until a node
   * answers, so a repeat is answered with the original message. Resolves with the answer.
   */
  send(cid, text, { clientId = randomId(), signal, onTrouble, deadline } = {}) {
    return this.call(cid, "POST", `/v1/conversations/${cid}/messages`, {
      body: { text, client_id: clientId }, signal, timeout: 15000, onTrouble, deadline,
    });
  }

  typing(cid, on, { signal } = {}) {
    return this.call(cid, "POST", `/v1/conversations/${cid}/typing`, {
      body: { typing: on }, signal, deadline: 2500, timeout: 3000, retryLimited: false,
    });
  }

  read(cid, seq, { signal } = {}) {
    return this.call(cid, "POST", `/v1/conversations/${cid}/read`, {
      body: { seq }, signal, deadline: 5000, timeout: 5000,
    });
  }

  conversations({ limit = 100, before = null, signal } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before !== null) q.set("before", String(before));
    return this.call("inbox:" + this.user, "GET", `/v1/conversations?${q}`, { signal });
  }

  /** {user: {online, last_seen}} for up to 100 users, or null when no node answered in time. */
  async presence(users, { signal } = {}) {
    const res = await this.call("presence", "GET", `/v1/presence?users=${users.map(encodeURIComponent).join(",")}`, {
      signal, deadline: 5000, timeout: 5000,
    });
    return res.status === 200 && res.data ? res.data.presence : null;
  }

  block(user, { signal } = {}) {
    return this.call("inbox:" + this.user, "PUT", `/v1/blocks/${encodeURIComponent(user)}`, { signal, deadline: 10000 });
  }

  unblock(user, { signal } = {}) {
    return this.call("inbox:" + this.user, "DELETE", `/v1/blocks/${encodeURIComponent(user)}`, { signal, deadline: 10000 });
  }

  /** The users we have blocked. */
  async blocks({ signal } = {}) {
    const res = await this.call("inbox:" + this.user, "GET", "/v1/blocks", { signal, deadline: 10000 });
    return res.status === 200 && res.data && Array.isArray(res.data.blocked) ? res.data.blocked : null;
  }
}
