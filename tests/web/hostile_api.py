"""
Hostile input at the API level: tokens, identifiers, JSON bodies, query parameters, every
route, valid controls, and seeded mutations of valid requests (see L{tests.web.hostile}).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import random
import zlib
from typing import Iterator

from tests.web.hostile import (
    ROUTES,
    SLACK,
    TYPING,
    Attack,
    Context,
    Template,
    endless,
    forge,
    jsonBody,
    reject,
    request,
    valid,
)

SEND = b"/v1/conversations/dm:alice:bob/messages"
EVENTS = b"/v1/conversations/dm:alice:bob/events?after=0&timeout=0"


def _send(ctx: Context, body: bytes, user: str | None = "alice", path: bytes = SEND,
          token: str | None = None, extra=()) -> bytes:
    headers = [(b"Host", ctx.host), (b"Content-Type", b"application/json")]
    if token is not None:
        headers.append((b"Authorization", b"Bearer " + token.encode()))
    elif user:
        headers.append(ctx.auth(user))
    return request(b"POST", path, headers + list(extra), body)


# -- auth


def _auth(ctx: Context) -> list[Template]:
    now = int(ctx.now)
    s = ctx.secret
    alg = b'{"alg":"HS256","typ":"JWT"}'
    sub = b'"sub":"alice"'
    tokens = {
        "garbage": "garbage",
        "three dots": "a.b.c",
        "empty parts": "..",
        "alg none": forge(s, b'{%s,"exp":%d}' % (sub, now + 3600), b'{"alg":"none"}', False),
        "alg none, signed": forge(s, b'{%s,"exp":%d}' % (sub, now + 3600), b'{"alg":"none"}'),
        "alg HS512 header": forge(s, b'{%s,"exp":%d}' % (sub, now + 3600),
                                  b'{"alg":"HS512","typ":"JWT"}'),
        "alg RS256 header": forge(s, b'{%s,"exp":%d}' % (sub, now + 3600),
                                  b'{"alg":"RS256","typ":"JWT"}'),
        "wrong key": forge(b"not-the-secret", b'{%s,"exp":%d}' % (sub, now + 3600)),
        "empty key": forge(b"", b'{%s,"exp":%d}' % (sub, now + 3600)),
        "no signature": forge(s, b'{%s,"exp":%d}' % (sub, now + 3600), alg, False),
        "exp NaN": forge(s, b'{%s,"exp":NaN}' % sub),
        "exp Infinity": forge(s, b'{%s,"exp":Infinity}' % sub),
        "exp -Infinity": forge(s, b'{%s,"exp":-Infinity}' % sub),
        "exp string": forge(s, b'{%s,"exp":"%d"}' % (sub, now + 3600)),
        "exp null": forge(s, b'{%s,"exp":null}' % sub),
        "exp true": forge(s, b'{%s,"exp":true}' % sub),
        "exp list": forge(s, b'{%s,"exp":[%d]}' % (sub, now + 3600)),
        "exp missing": forge(s, b'{%s}' % sub),
        "exp past": forge(s, b'{%s,"exp":%d}' % (sub, now - 10)),
        "exp 0": forge(s, b'{%s,"exp":0}' % sub),
        "exp 1e999": forge(s, b'{%s,"exp":1e999}' % sub),
        "nbf future": forge(s, b'{%s,"exp":%d,"nbf":%d}' % (sub, now + 3600, now + 1800)),
        "nbf NaN": forge(s, b'{%s,"exp":%d,"nbf":NaN}' % (sub, now + 3600)),
        "sub missing": forge(s, b'{"exp":%d}' % (now + 3600)),
        "sub null": forge(s, b'{"sub":null,"exp":%d}' % (now + 3600)),
        "sub number": forge(s, b'{"sub":7,"exp":%d}' % (now + 3600)),
        "sub empty": forge(s, b'{"sub":"","exp":%d}' % (now + 3600)),
        "sub with a colon": forge(s, b'{"sub":"alice:bob","exp":%d}' % (now + 3600)),
        "sub too long": forge(s, b'{"sub":"%s","exp":%d}' % (b"a" * 65, now + 3600)),
        "sub unicode": forge(s, '{"sub":"alicé","exp":%d}'.encode() % (now + 3600)),
        "sub with a NUL": forge(s, b'{"sub":"alice\\u0000","exp":%d}' % (now + 3600)),
        "sub list": forge(s, b'{"sub":["alice"],"exp":%d}' % (now + 3600)),
        "payload not JSON": forge(s, b"not json"),
        "payload a list": forge(s, b'["alice"]'),
        "payload deep": forge(s, b'{"sub":"alice","exp":%d,"x":%s%s}' % (
            now + 3600, b"[" * 5000, b"]" * 5000)),
        "node audience": forge(s, b'{%s,"aud":"hpchat-internal","exp":%d}' % (sub, now + 3600)),
        "header not JSON": forge(s, b'{%s,"exp":%d}' % (sub, now + 3600), b"nope"),
        "header crit": forge(s, b'{%s,"exp":%d}' % (sub, now + 3600),
                             b'{"alg":"HS256","crit":["x"],"x":1}'),
    }
    valid_ = ctx.tokens["alice"]
    headerValues = {
        "Basic scheme": b"Basic YWxpY2U6eA==",
        "no scheme": valid_.encode(),
        "Bearer only": b"Bearer",
        "Bearer and spaces": b"Bearer    ",
        "token with junk after": b"Bearer " + valid_.encode() + b"junk",
        "token with a second word": b"Bearer " + valid_.encode() + b" junk",
        "token truncated": b"Bearer " + valid_.encode()[:-3],
        "token with padding": b"Bearer " + valid_.encode() + b"==",
    }
    # A target that does not decode (or decodes to a NUL) may be refused before the token
    # is looked at.
    queryValues = {
        "query token with junk": (valid_ + "junk", (401,)),
        "query token %00": (valid_ + "%00", (400, 401)),
        "query token %20junk": (valid_ + "%20junk", (401,)),
        "query token empty": ("", (401,)),
        "query token garbage": ("%ff%fe", (400, 401)),
    }

    def bearer(name: str, token: str):
        def make(ctx, rng, route):
            marker = ctx.marker()
            if rng.random() < 0.5 and route.user:
                data = route.build(ctx).replace(ctx.tokens[route.user].encode(),
                                                token.encode(), 1)
                return reject("auth", f"{name} [{route.name}]", data, (401,), ("unauthorized",))
            return reject("auth", f"{name} [send]",
                          _send(ctx, jsonBody({"text": marker}), token=token), (401,),
                          ("unauthorized",), marker=marker)
        return make

    def header(name: str, value: bytes, statuses=(401,), codes=("unauthorized",)):
        def make(ctx, rng, route):
            marker = ctx.marker()
            data = _send(ctx, jsonBody({"text": marker}), None,
                         extra=[(b"Authorization", value)])
            return reject("auth", f"{name} [send]", data, statuses, codes, marker=marker)
        return make

    def query(name: str, value: str, statuses):
        def make(ctx, rng, route):
            marker = ctx.marker()
            data = _send(ctx, jsonBody({"text": marker}), None,
                         path=SEND + b"?access_token=" + value.encode())
            return reject("auth", f"{name} [send]", data, statuses,
                          ("unauthorized", "bad_request"), marker=marker)
        return make

    def missing(ctx, rng, route):
        path = rng.choice([r for r in ROUTES if r.user])
        headers = [h for h in path.headers(ctx) if h[0] != b"Authorization"]
        return reject("auth", f"no token [{path.name}]",
                      request(path.method, path.target, headers, path.body), (401,),
                      ("unauthorized",))

    def internal(name: str, value: bytes | None):
        def make(ctx, rng, route):
            marker = ctx.marker()
            body = jsonBody({"id": marker, "user": "alice", "type": "hostile", "from": None,
                             "data": {"marker": marker}})
            extra = [(b"Authorization", value)] if value is not None else []
            return reject("auth", f"internal notification {name}", _send(
                ctx, body, None, b"/internal/v1/notifications", extra=extra), (401, 403),
                marker=marker)
        return make

    templates: list[Template] = [bearer(n, t) for n, t in tokens.items()]
    templates += [header(n, v) for n, v in headerValues.items()]
    templates += [query(n, v, statuses) for n, (v, statuses) in queryValues.items()]
    # A NUL in a header value is refused as malformed HTTP before any token is looked at.
    templates.append(header("token with a NUL", b"Bearer " + valid_.encode()[:-1] + b"\x00",
                            (400,), None))
    templates.append(missing)

    def twice(first: bytes, second: bytes, name: str):
        # Authorization is a singleton: two of them are refused, never one picked.
        def make(ctx, rng, route):
            marker = ctx.marker()
            data = _send(ctx, jsonBody({"text": marker}), None, extra=[
                (b"Authorization", first), (b"Authorization", second)])
            return reject("auth", f"two Authorization headers, {name}", data, (400, 401),
                          ("unauthorized", "bad_request"), marker=marker)
        return make

    good = b"Bearer " + valid_.encode()
    templates += [twice(b"Bearer garbage", good, "garbage first"),
                  twice(good, b"Bearer garbage", "the valid one first"),
                  twice(good, b"Bearer " + ctx.tokens["bob"].encode(), "alice then bob")]
    nodeKeyWrong = forge(b"wrong", b'{"sub":"n1","aud":"hpchat-internal","exp":%d}'
                         % (now + 60))
    for name, value in (("without a token", None), ("with a user token",
                                                     b"Bearer " + valid_.encode()),
                        ("with garbage", b"Bearer garbage"),
                        ("with a node token of the wrong key", b"Bearer " +
                         nodeKeyWrong.encode()),
                        ("with an empty Bearer", b"Bearer "),
                        ("with exp NaN", b"Bearer " + forge(
                            s, b'{"sub":"n1","aud":"hpchat-internal","exp":NaN}').encode())):
        templates.append(internal(name, value))
    return templates


# -- identifiers


def _ids(ctx: Context) -> list[Template]:
    bad = ["dm:alice:alice", "dm:bob:alice", "dm:alice:bob:x", "dm:alice", "dm", "dm::bob",
           "dm:alice:", ":alice:bob", "DM:alice:bob", "dm:alice:b%C3%B3b", "dm:alice:" +
           "b" * 65, "dm:alice:bob%00", "dm:alice:bob%2Fx", "dm:alice:bo%20b", "inbox:bob",
           "inbox:alice", "dm:alice:bob%0d%0a", "dm:%C3%A0lice:bob", "dm:alice:bob%3A",
           "dm:alice:%E2%80%8Bbob", "dm:al.ice:bob", "dm:alice:bob.", "dm%3Aalice",
           "dm:alice:-", "dm:" + "a" * 3000 + ":bob", "dm:alice:bob;x", "dm:%EF%BD%81lice:bob",
           "dm:alice:bob%09", "dm:alice:bob%7F"]
    forbidden = ["dm:bob:carol", "dm:bob:zed", "dm:carol:dave", "dm:bob:bobby"]
    kinds = [("events", b"GET", b"/events?after=0&timeout=0"),
             ("history", b"GET", b"/messages"), ("typing", b"POST", b"/typing"),
             ("send", b"POST", b"/messages"), ("stream", b"GET", b"/stream?after=0")]

    def make(cid: str, status: int, kind):
        name, method, tail = kind

        def attack(ctx, rng, route):
            marker = ctx.marker() if name == "send" else None
            body = (jsonBody({"text": marker}) if marker else
                    b'{"typing": true}' if name == "typing" else None)
            data = request(method, b"/v1/conversations/" + cid.encode() + tail,
                           [(b"Host", ctx.host), ctx.auth("alice")], body)
            codes = ("forbidden",) if status == 403 else ("bad_conversation", "bad_request")
            return reject("ids", f"{cid[:60]} [{name}]", data, (status,), codes,
                          marker=marker)
        return attack

    templates = [make(c, 400, k) for c in bad for k in kinds]
    templates += [make(c, 403, k) for c in forbidden for k in kinds]
    for path in (b"/v1/conversations//events", b"/v1/conversations/events",
                 b"/v1/conversations/dm:alice:bob/", b"/v1/conversations/dm:alice:bob",
                 b"/v1/conversations/dm:alice:bob/events/x", b"/v1/inbox/bob/events",
                 b"/v1/inbox/events/bob", b"/v1/conversations/dm:alice:bob/nothing"):
        templates.append(lambda ctx, rng, route, p=path: reject(
            "ids", f"path {p.decode()}", request(b"GET", p, [(b"Host", ctx.host),
                                                            ctx.auth()]), (400, 404, 405)))
    return templates


# -- JSON bodies


def _json(ctx: Context) -> list[Template]:
    long = ctx.max_text_chars + 1

    def body(name: str, make, codes=("bad_json", "bad_request"), status=(400,)):
        def attack(ctx, rng, route):
            marker = ctx.marker()
            return reject("json", name, _send(ctx, make(marker)), status, codes,
                          marker=marker)
        return attack

    def typing(name: str, raw: bytes):
        return lambda ctx, rng, route: reject(
            "json", f"typing {name}", request(b"POST", TYPING.target, TYPING.headers(ctx),
                                              raw), (400,), ("bad_json", "bad_request"))

    t = lambda m: json.dumps(m)  # noqa: E731
    templates: list[Template] = [
        body("not JSON", lambda m: m.encode()),
        body("empty body", lambda m: b""),
        body("only spaces", lambda m: b"   "),
        body("truncated", lambda m: b'{"text": "%s"' % m.encode()),
        body("trailing garbage", lambda m: b'{"text": "%s"} x' % m.encode()),
        body("two objects", lambda m: b'{"text": "%s"}{"text": "x"}' % m.encode()),
        body("single quotes", lambda m: b"{'text': '%s'}" % m.encode()),
        body("text NaN", lambda m: b'{"text": NaN, "m": %s}' % t(m).encode()),
        body("text Infinity", lambda m: b'{"text": Infinity, "m": %s}' % t(m).encode()),
        body("client_id NaN", lambda m: b'{"text": %s, "client_id": NaN}' % t(m).encode()),
        body("client_id huge number", lambda m: b'{"text": %s, "client_id": 1e999}'
             % t(m).encode()),
        body("client_id of 5000 digits", lambda m: b'{"text": %s, "client_id": %s}'
             % (t(m).encode(), b"9" * 5000)),
        body("text a number", lambda m: b'{"text": 12345678901234567890123, "m": %s}'
             % t(m).encode()),
        body("deeply nested array", lambda m: b'{"text": %s, "x": %s%s}' % (
            t(m).encode(), b"[" * 30000, b"]" * 30000)),
        body("deeply nested objects", lambda m: b'{"text": %s, "x": %s1%s}' % (
            t(m).encode(), b'{"a":' * 10000, b"}" * 10000)),
        body("unclosed nesting", lambda m: b'{"text": %s, "x": %s' % (t(m).encode(),
                                                                       b"[" * 30000)),
        body("text null", lambda m: jsonBody({"text": None, "m": m})),
        body("text list", lambda m: jsonBody({"text": [m]})),
        body("text object", lambda m: jsonBody({"text": {"t": m}})),
        body("text true", lambda m: jsonBody({"text": True, "m": m})),
        body("text empty", lambda m: jsonBody({"text": "", "m": m})),
        body("text spaces only", lambda m: jsonBody({"text": " \t\n ", "m": m})),
        body("text too long", lambda m: jsonBody({"text": m + "x" * long})),
        body("text too long in 3-byte characters", lambda m: jsonBody({"text": m + "€" * long})),
        body("text missing", lambda m: jsonBody({"txt": m})),
        body("client_id empty", lambda m: jsonBody({"text": m, "client_id": ""})),
        body("client_id with a space", lambda m: jsonBody({"text": m, "client_id": "a b"})),
        body("client_id of 65", lambda m: jsonBody({"text": m, "client_id": "c" * 65})),
        body("client_id a number", lambda m: jsonBody({"text": m, "client_id": 7})),
        body("client_id a list", lambda m: jsonBody({"text": m, "client_id": ["c"]})),
        body("client_id unicode", lambda m: jsonBody({"text": m, "client_id": "cé"})),
        body("client_id with a NUL", lambda m: jsonBody({"text": m, "client_id": "c\x00"})),
        body("client_id with a newline", lambda m: jsonBody({"text": m, "client_id": "c\n"})),
        body("extra fields with an empty text", lambda m: jsonBody(
            {"text": "", "m": m, "sender": "bob", "seq": 1, "id": "x"})),
        body("a bad field among many", lambda m: jsonBody(
            dict({f"f{i}": i for i in range(2000)}, text=m, client_id="bad id"))),
        body("an array", lambda m: jsonBody([{"text": m}])),
        body("a string", lambda m: jsonBody(m)),
        body("a number", lambda m: b"1"),
        body("null", lambda m: b"null"),
        body("true", lambda m: b"true"),
        body("a BOM then not JSON", lambda m: b"\xef\xbb\xbf" + m.encode()),
        body("duplicate keys, the last empty", lambda m: b'{"text": %s, "text": ""}'
             % t(m).encode()),
    ]

    def coded(name: str, make, extra, statuses=(400, 415)):
        # The API takes JSON in UTF-8 only: no forms, no content codings to unpack.
        def attack(ctx, rng, route):
            marker = ctx.marker()
            return reject("json", name, _send(ctx, make(marker), extra=extra), statuses,
                          ("bad_json", "bad_request", "unsupported_media_type"),
                          marker=marker)
        return attack

    templates += [
        coded("a form body", lambda m: b"text=" + m.encode(),
              [(b"Content-Type", b"application/x-www-form-urlencoded")]),
        coded("a multipart body", lambda m: b"--b\r\nContent-Disposition: form-data; "
              b'name="text"\r\n\r\n' + m.encode() + b"\r\n--b--\r\n",
              [(b"Content-Type", b"multipart/form-data; boundary=b")]),
        coded("a gzip body", lambda m: gzip.compress(jsonBody({"text": m})),
              [(b"Content-Encoding", b"gzip")]),
        coded("a deflate body", lambda m: zlib.compress(jsonBody({"text": m})),
              [(b"Content-Encoding", b"deflate")]),
    ]
    for name, raw in (("not JSON", b"yes"), ("a string", b'"true"'), ("a number",
                                                                     b'{"typing": 1}'),
                      ("null", b'{"typing": null}'), ("a string value", b'{"typing": "true"}'),
                      ("missing", b"{}"), ("an array", b"[true]"),
                      ("NaN", b'{"typing": NaN}'), ("nested", b'{"typing": {"typing": true}}')):
        templates.append(typing(name, raw))
    return templates


# -- query parameters


def _query(ctx: Context) -> list[Template]:
    base = b"/v1/conversations/dm:alice:bob/"

    def q(path: bytes, query: bytes, statuses, codes=("bad_request",), why=""):
        def make(ctx, rng, route):
            data = request(b"GET", path + b"?" + query, [(b"Host", ctx.host), ctx.auth()])
            name = f"{path.decode().rsplit('/', 1)[-1]}?{query.decode()[:60]}"
            if why:
                return valid("query", name, data, statuses, why)
            return reject("query", name, data, statuses, codes)
        return make

    events, history, inbox = base + b"events", base + b"messages", b"/v1/inbox/events"
    stream, inboxStream = base + b"stream", b"/v1/inbox/stream"
    ahead = b"%d" % (ctx.victimLastSeq + 1000)
    templates: list[Template] = []
    for value in (b"-1", b"abc", b"1e9", b"", b"0x10", b"1.5", b"99999999999999999999",
                  b"+1", b"%201", b"1%20", b"--1", b"1,2", b"\xd9\xa3", b"%20", b"-0x1",
                  b"9" * 400):
        templates.append(q(events, b"timeout=0&after=" + value, (400,)))
        templates.append(q(inbox, b"timeout=0&after=" + value, (400,)))
        templates.append(q(stream, b"after=" + value, (400,)))
        templates.append(q(inboxStream, b"after=" + value, (400,)))
    templates += [
        q(events, b"timeout=NaN&after=0", (400,)),
        q(events, b"timeout=nan&after=0", (400,)),
        q(events, b"timeout=abc&after=0", (400,)),
        q(events, b"timeout=&after=0", (400,)),
        q(inbox, b"timeout=NaN", (400,)),
        q(events, b"timeout=0&typing_version=-1", (400,)),
        q(events, b"timeout=0&typing_version=x", (400,)),
        q(events, b"timeout=0&after=-1&after=-2", (400,)),
        q(events, b"timeout=0&after=" + ahead, (409,), ("cursor_ahead",)),
        q(inbox, b"timeout=0&after=999999999", (409,), ("cursor_ahead",)),
        q(stream, b"after=" + ahead, (409,), ("cursor_ahead",)),
        q(inboxStream, b"after=999999999", (409,), ("cursor_ahead",)),
        q(events, b"timeout=-1&after=0", {200}, why="timeout is clamped to 0"),
        q(events, b"timeout=0&after=0&unknown=%ff", {200, 400},
          why="an unknown parameter may be ignored"),
        q(history, b"limit=0", (400,)),
        q(history, b"limit=-1", (400,)),
        q(history, b"limit=abc", (400,)),
        q(history, b"limit=0&limit=0", (400,)),
        q(history, b"limit=1e2", (400,)),
        q(history, b"limit=999", {200}, why="limit is clamped to 200 (DESIGN §3)"),
        q(history, b"before=0", (400,)),
        q(history, b"before=-5", (400,)),
        q(history, b"before=x", (400,)),
        q(b"/v1/presence", b"users=", (400, 404), None),
        q(b"/v1/presence", b"users=a,,b", (400, 404), None),
        q(b"/v1/presence", b"users=" + b",".join(b"u%d" % i for i in range(101)), (400, 404), None),
        q(b"/v1/presence", b"users=%ff", (400, 404), None),
        q(b"/v1/conversations", b"limit=0", (400, 404), None),
        q(b"/v1/conversations", b"before=%ff", (400, 404), None),
    ]
    return templates


# -- every route


def _routes(ctx: Context) -> list[Template]:
    def r(method: bytes, path: bytes, statuses, user=None, body=None, why="", **kw):
        def make(ctx, rng, route):
            headers = [(b"Host", ctx.host)] + ([ctx.auth(user)] if user else [])
            data = request(method, path, headers, body)
            name = f"{method.decode()} {path.decode()[:60]}"
            if why:
                return valid("routes", name, data, statuses, why, **kw)
            return reject("routes", name, data, statuses, **kw)
        return make

    read = b"/v1/conversations/dm:alice:bob/read"
    node = nodeToken(ctx, b'{"sub":"n2","aud":"hpchat-internal","exp":%d}' % (ctx.now + 600))

    def internal(name: str, body: bytes, statuses=(400,), token: str = node):
        # With a real node token: the body itself must be refused.
        def make(ctx, rng, route):
            marker = ctx.marker()
            data = _send(ctx, body.replace(b"MARKER", marker.encode()), None,
                         b"/internal/v1/notifications", token=token)
            return reject("routes", f"internal notification {name}", data, statuses,
                          marker=marker)
        return make

    note = b'{"id": "MARKER", "user": "alice", "type": "hostile", "from": null}'
    templates = [
        internal("not JSON", b"MARKER"),
        internal("a list", b"[" + note + b"]"),
        internal("id a number", note.replace(b'"MARKER"', b"7")),
        internal("id too long", note.replace(b"MARKER", b"MARKER" + b"i" * 64)),
        internal("user invalid", note.replace(b'"alice"', b'"al ice"')),
        internal("user missing", note.replace(b'"user": "alice", ', b"")),
        internal("type invalid", note.replace(b'"hostile"', b'"Hostile!"')),
        internal("from invalid", note.replace(b"null", b'"a:b"')),
        internal("data a list", note[:-1] + b', "data": []}'),
        internal("notifications a string", b'{"notifications": "MARKER"}'),
        internal("notifications empty", b'{"notifications": [], "m": "MARKER"}'),
        internal("101 notifications", b'{"notifications": [%s]}' % b",".join([note] * 101)),
        internal("a node token signed with the node key, exp NaN", note, (401,), nodeToken(
            ctx, b'{"sub":"n2","aud":"hpchat-internal","exp":NaN}')),
        internal("a node token signed with the node key, no aud", note, (401,), nodeToken(
            ctx, b'{"sub":"n2","exp":%d}' % (ctx.now + 600))),
        internal("a node token signed with the node key, expired", note, (401,), nodeToken(
            ctx, b'{"sub":"n2","aud":"hpchat-internal","exp":%d}' % (ctx.now - 5))),
    ]
    return templates + [
        r(b"GET", b"/static/nothing.js", (404,)),
        r(b"GET", b"/static/app.js/x", (404,)),
        r(b"POST", b"/static/app.js", (405,), body=b"{}"),
        r(b"GET", b"/static/app.js", {200}, why="a static file"),
        r(b"GET", b"/static", {301, 302, 307, 308, 404}, why="a redirect to /static/ is valid"),
        r(b"POST", b"/healthz", (405,), body=b"{}"),
        r(b"PUT", b"/healthz", (405,), body=b"{}"),
        r(b"GET", b"/healthz/x", (404,)),
        r(b"POST", b"/metrics", (405,), body=b"{}"),
        r(b"GET", b"/metrics", {200}, why="Prometheus text"),
        r(b"GET", b"/readyz", {200}, why="the node is ready"),
        r(b"POST", b"/readyz", (405,), body=b"{}"),
        r(b"GET", b"/v1/cluster", {200}, why="the cluster view"),
        r(b"DELETE", b"/v1/cluster", (405,)),
        r(b"GET", b"/internal/v1/notifications", (401, 403, 404, 405)),
        r(b"PUT", b"/internal/v1/notifications", (401, 403, 404, 405), body=b"{}"),
        r(b"POST", b"/v1/dev/login", (404,), body=b'{"user": "alice"}'),
        r(b"GET", b"/v1/nothing", (404,)),
        r(b"GET", b"/V1/cluster", (404,)),
        r(b"GET", b"/v2/cluster", (404,)),
        r(b"GET", b"/.env", (404,)),
        r(b"GET", b"/v1/conversations/dm:alice:bob/events?timeout=0&after=0", (401,)),
        r(b"POST", read, (400, 404, 405), "alice", b'{"seq": -1}'),
        r(b"POST", read, (400, 404, 405), "alice", b'{"seq": "1"}'),
        r(b"POST", read, (400, 404, 405), "alice", b"nope"),
        r(b"POST", read, (409, 404, 405), "alice", b'{"seq": 999999999}'),
        r(b"PUT", b"/v1/blocks/bad%20user", (400, 404, 405), "alice"),
        r(b"PUT", b"/v1/blocks/" + b"u" * 65, (400, 404, 405), "alice"),
        r(b"DELETE", b"/v1/blocks/%ff", (400, 404, 405), "alice"),
        r(b"PUT", b"/v1/blocks/bob", (401, 404, 405)),
        r(b"GET", b"/v1/blocks", (401, 404)),
        r(b"GET", b"/v1/presence?users=bob", (401, 404)),
        r(b"GET", b"/v1/conversations", (401, 404, 405)),
    ]


def nodeToken(ctx: Context, payload: bytes) -> str:
    """
    A token signed with the key nodes derive from the secret for calls between them.
    """
    key = hmac.new(ctx.secret, b"hpchat internal calls", hashlib.sha256).digest()
    return forge(key, payload)


def _control(ctx: Context) -> list[Template]:
    return [lambda ctx, rng, route, r=r: valid("control", r.name, r.build(ctx), {r.ok},
                                               "a valid request") for r in ROUTES]


# -- seeded mutations of valid requests

NASTY = b"\r\n\x00\xff :\t%\x7f\x80\"\\/;,=?#"


def mutate(original: bytes, rng: random.Random) -> bytes:
    """
    C{original} with one to three changes in its head (never unchanged).
    """
    while True:
        changed = _mutate(original, rng)
        if changed != original:
            return changed


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    end = data.find(b"\r\n\r\n")
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        at = rng.randrange(max(1, end))
        if op == 0:
            data.insert(at, rng.choice(NASTY))
        elif op == 1 and len(data) > 1:
            del data[at]
        elif op == 2:
            data[at] = rng.randrange(256)
        elif op == 3:
            data[at:at] = bytes(rng.choice(NASTY) for _ in range(rng.randint(2, 40)))
        else:
            line = data.find(b"\r\n", at)
            if 0 <= line < end:
                start = data.rfind(b"\r\n", 0, line) + 2
                data[line:line] = b"\r\n" + data[start:line]
        end = max(1, min(len(data), data.find(b"\r\n\r\n") if b"\r\n\r\n" in data else
                         len(data)))
    return bytes(data)


def fuzz(ctx: Context, rng: random.Random) -> Iterator[Attack]:
    while True:
        route = rng.choice(ROUTES)
        yield Attack("fuzz", f"mutated {route.name}", (mutate(route.build(ctx), rng),), None,
                     silentClose=True, probe=False,
                     deadline=max(ctx.head_timeout + ctx.body_timeout, ctx.max_poll_timeout)
                     + SLACK)


def auth(ctx, rng):
    return endless("auth", _auth(ctx), ctx, rng)


def ids(ctx, rng):
    return endless("ids", _ids(ctx), ctx, rng)


def jsonBodies(ctx, rng):
    return endless("json", _json(ctx), ctx, rng)


def query(ctx, rng):
    return endless("query", _query(ctx), ctx, rng)


def routes(ctx, rng):
    return endless("routes", _routes(ctx), ctx, rng)


def control(ctx, rng):
    return endless("control", _control(ctx), ctx, rng)

