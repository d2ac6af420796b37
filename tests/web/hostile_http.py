"""
Hostile input around HTTP/1.1 itself: byte encodings, methods and versions, the limits of
C{[limits]}, and slow clients (see L{tests.web.hostile}).
"""

from __future__ import annotations

import json
import random
from typing import Callable, Iterator

from tests.web.hostile import (
    AT_ONCE,
    CLOSE,
    ROUTES,
    SLACK,
    TYPING,
    Attack,
    Context,
    Template,
    endless,
    jsonBody,
    reject,
    request,
    valid,
)

# -- encodings


def _encoding(ctx: Context) -> list[Template]:
    badUTF8 = [b"%ff", b"%c0%af", b"%e0%80%af", b"%ed%a0%80", b"%f8%88%80%80%80", b"%c3",
               b"%f4%90%80%80", b"%00", b"%2f", b"%252f", b"%u0041", b"%%", b"%2", b"\xff",
               b"\xc0\xaf", b"%20", b"%0a"]
    conversation = [("events", b"GET", b"/events?after=0&timeout=0", None),
                    ("history", b"GET", b"/messages", None),
                    ("typing", b"POST", b"/typing", b'{"typing": true}'),
                    ("send", b"POST", b"/messages", "send")]

    def cid(enc: bytes, kind):
        name, method, tail, body = kind

        def make(ctx, rng, route):
            marker = ctx.marker() if body == "send" else None
            data = request(method, b"/v1/conversations/dm:alice:bob" + enc + tail,
                           [(b"Host", ctx.host), ctx.auth("alice")],
                           jsonBody({"text": marker}) if marker else body)
            return reject("encoding", f"{enc!r} in a conversation id [{name}]", data, (400,),
                          ("bad_conversation", "bad_request"), marker=marker)
        return make

    def path(p: bytes, statuses=(400, 404)):
        return lambda ctx, rng, route: reject(
            "encoding", f"path {p!r}", request(b"GET", p, [(b"Host", ctx.host)]), statuses)

    def query(q: bytes, statuses, codes=None, user="alice", why=""):
        def make(ctx, rng, route):
            first = b"after=0&" if q.startswith(b"timeout=") else b"timeout=0&"
            data = request(b"GET", b"/v1/conversations/dm:alice:bob/events?" + first + q,
                           [(b"Host", ctx.host)] + ([ctx.auth(user)] if user else []))
            if why:
                return valid("encoding", f"query {q!r}", data, statuses, why)
            return reject("encoding", f"query {q!r}", data, statuses, codes)
        return make

    def header(name: bytes, value: bytes, statuses, codes=None, why=""):
        def make(ctx, rng, route):
            if name == b"Authorization" and not route.user:
                route = ROUTES[2]
            headers = [(n, v) for n, v in route.headers(ctx) if n.lower() != name.lower()]
            data = request(route.method, route.target, headers + [(name, value)], route.body)
            label = f"header {name.decode()}: {value[:40]!r} [{route.name}]"
            if why:
                return valid("encoding", label, data, {route.ok, *statuses}, why)
            return reject("encoding", label, data, statuses, codes)
        return make

    def body(raw: Callable[[str], bytes], name: str):
        def make(ctx, rng, route):
            marker = ctx.marker()
            data = request(b"POST", b"/v1/conversations/dm:alice:bob/messages",
                           [(b"Host", ctx.host), ctx.auth("alice"),
                            (b"Content-Type", b"application/json")], raw(marker))
            return reject("encoding", f"body {name}", data, (400,), ("bad_json", "bad_request"),
                          marker=marker)
        return make

    def textWith(suffix: bytes):
        return lambda m: b'{"text": "' + m.encode() + suffix + b'"}'

    templates: list[Template] = [cid(e, k) for e in badUTF8 for k in conversation]
    templates += [path(p) for p in (
        b"/healthz%ff", b"/v1/cluster%00", b"/%c0%afhealthz", b"/healthz%2f",
        b"/static/%c0%ae%c0%ae/%c0%ae%c0%ae/api.py", b"/static/..%2f..%2f__init__.py",
        b"/static/%2e%2e/%2e%2e/web/api.py", b"/static/../api.py", b"/static/%00",
        b"/static/app.js%00", b"/static/app.js%ff", b"/static/%252e%252e/api.py",
        b"/static/..\\api.py", b"/v1/%ff/cluster", b"/%e2%80%8ehealthz", b"/healthz\xff")]
    templates += [
        query(b"after=%ff", (400,), ("bad_request",)),
        query(b"after=%00", (400,), ("bad_request",)),
        query(b"after=1%00", (400,), ("bad_request",)),
        query(b"after=%d9%a3", (400,), ("bad_request",)),
        query(b"timeout=%ff", (400,), ("bad_request",)),
        query(b"typing_version=%c0%b1", (400,), ("bad_request",)),
        query(b"access_token=%ff%fe", (400, 401), ("unauthorized", "bad_request"), user=None),
        query(b"after=%30", {200}, why="%30 is the digit 0, percent-encoded"),
        query(b"%ff=1", {200, 400}, why="an unknown parameter may be ignored"),
        header(b"Host", b"\xff\xfe", (400,)),
        header(b"Host", b"[::1", (400,)),
        header(b"Host", b"a:b:c", (400,)),
        header(b"Host", b"a b:1", (400,)),
        header(b"Host", "é.example".encode(), (400,)),
        header(b"Host", b"127.0..1:80", (400,), why="a reg-name may hold empty labels "
               "(RFC 3986 §3.2.2); serving or refusing it are both right"),
        header(b"Host", b"..", (400,), why="a reg-name of dots is valid syntax"),
        header(b"Host", b"xn--:1", (400,), why="a reg-name that is not valid IDNA is "
               "valid URI syntax"),
        header(b"Host", b"host:99999", (400,), why="port is *DIGIT in RFC 3986"),
        header(b"Host", b"host:", (400,), why="an empty port is valid syntax"),
        header(b"Host", b"", (400,), why="RFC 9112 §3.2 allows an empty Host"),
        header(b"Host", b"[::1]:80", (400,), why="an IPv6 literal"),
        header(b"Host", b"\xc0\xae", (400,)),
        header(b"Host", b"a\x00b", (400,)),
        header(b"X-Hostile", b"\xc0\xaf\xff", (), why="obs-text is allowed in field values"),
    ]
    for value in (b"Bearer \xff\xfe", b"\xffearer abc", b"Bearer %ff", b"Bearer \xc0\xaf"):
        templates.append(header(b"Authorization", value, (401,), ("unauthorized",)))
    for suffix, name in ((b"\xff", "0xff"), (b"\xc0\xaf", "overlong /"),
                         (b"\xed\xa0\x80", "UTF-8 surrogate"), (b"\xf4\x90\x80\x80",
                                                               "beyond U+10FFFF"),
                         (b"\xe2\x82", "truncated sequence"), (b"\xe9", "Latin-1"),
                         (b"\x00", "raw NUL in a string"), (b"\x1f", "raw control"),
                         (b"\\ud800", "lone surrogate escape"),
                         (b"\\udc00\\ud800", "reversed surrogates")):
        templates.append(body(textWith(suffix), name))
    for codec in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"):
        templates.append(body(lambda m, c=codec: json.dumps({"text": m}).encode(c),
                              f"in {codec.upper()}"))
    return templates


def encoding(ctx, rng):
    return endless("encoding", _encoding(ctx), ctx, rng)


# -- methods and versions


def _methods(ctx: Context) -> list[Template]:
    def method(m: bytes, statuses=(400, 405)):
        return lambda ctx, rng, route: reject(
            "methods", f"method {m[:20]!r} [{route.name}]",
            route.build(ctx).replace(route.method, m, 1), statuses)

    def version(v: bytes, statuses=(400,), why="", **kw):
        def make(ctx, rng, route):
            data = route.build(ctx).replace(b" HTTP/1.1\r\n", b" " + v + b"\r\n", 1)
            if why:
                return valid("methods", f"version {v!r} [{route.name}]", data,
                             {route.ok, *statuses}, why, **kw)
            return reject("methods", f"version {v!r} [{route.name}]", data, statuses, **kw)
        return make

    def target(t: bytes, statuses, why="", m=b"GET"):
        def make(ctx, rng, route):
            data = request(m, t % ctx.host if b"%s" in t else t, [(b"Host", ctx.host)])
            if why:
                return valid("methods", f"{m.decode()} {t!r}", data, statuses, why)
            return reject("methods", f"{m.decode()} {t!r}", data, statuses)
        return make

    def extra(headers, name, statuses, why, **kw):
        return lambda ctx, rng, route: valid(
            "methods", f"{name} [{route.name}]", route.build(ctx, headers),
            {route.ok, *statuses}, why, **kw)

    trace = [(b"X-Trace", b"hpchat-trace-echo"), (b"Max-Forwards", b"0")]
    return [
        method(b"get"), method(b"Get"), method(b"post"), method(b"FOO"), method(b"GETT"),
        method(b"GE(T"), method(b"G\x00ET", (400,)), method(b"", (400,)),
        method(b"M-SEARCH"), method(b"PRI"),
        lambda ctx, rng, route: reject("methods", f"TRACE [{route.name}]", route.build(
            ctx, trace).replace(route.method, b"TRACE", 1), (400, 405)),
        lambda ctx, rng, route: reject("methods", "CONNECT authority", request(
            b"CONNECT", ctx.host, [(b"Host", ctx.host)]), (400, 404, 405)),
        lambda ctx, rng, route: reject("methods", f"CONNECT [{route.name}]", route.build(
            ctx).replace(route.method, b"CONNECT", 1), (400, 404, 405)),
        lambda ctx, rng, route: reject("methods", "DELETE /healthz", request(
            b"DELETE", b"/healthz", [(b"Host", ctx.host)]), (405,)),
        lambda ctx, rng, route: reject("methods", "PUT events", request(
            b"PUT", ROUTES[2].target, ROUTES[2].headers(ctx), b"{}"), (405,)),
        lambda ctx, rng, route: reject("methods", "PATCH typing", request(
            b"PATCH", TYPING.target, TYPING.headers(ctx), TYPING.body), (405,)),
        lambda ctx, rng, route: reject("methods", "POST /v1/cluster", request(
            b"POST", b"/v1/cluster", [(b"Host", ctx.host)], b"{}"), (405,)),
        lambda ctx, rng, route: valid("methods", "HEAD /healthz", request(
            b"HEAD", b"/healthz", [(b"Host", ctx.host)]), {200, 405},
            "HEAD is a GET without the body", head=True),
        lambda ctx, rng, route: valid("methods", f"OPTIONS [{route.name}]", route.build(
            ctx).replace(route.method, b"OPTIONS", 1), {200, 204, 405},
            "OPTIONS is a valid method that a node may answer or refuse"),
        lambda ctx, rng, route: valid("methods", "CORS preflight", request(
            b"OPTIONS", TYPING.target, [(b"Host", ctx.host), (b"Origin", b"http://a.example"),
                                        (b"Access-Control-Request-Method", b"POST")]),
            {204}, "a preflight from an allowed origin"),
        # Refused at once, or waited for as an unfinished head (408 or closed by head_timeout).
        lambda ctx, rng, route: reject("methods", "HTTP/0.9 request", (
            b"GET /healthz\r\n",), (400, 408), silentClose=True,
            deadline=ctx.head_timeout + 3),
        lambda ctx, rng, route: reject("methods", "no space before the version", (
            b"GET /healthzHTTP/1.1\r\nHost: " + ctx.host + b"\r\n\r\n",), (400, 408),
            silentClose=True, deadline=ctx.head_timeout + 3),
        lambda ctx, rng, route: reject("methods", f"a bare LF inside the target [{route.name}]",
                                       (route.build(ctx).replace(route.target, route.target[:6]
                                                                 + b"\n" + route.target[6:], 1),),
                                       (400, 408), silentClose=True,
                                       deadline=ctx.head_timeout + 3),
        version(b"HTTP/1.2", why="RFC 9110 §2.5: a higher minor version is served as 1.1"),
        version(b"HTTP/2.0"), version(b"HTTP/3.0"), version(b"HTTP/1.10"),
        version(b"HTTP/01.1"), version(b"http/1.1"), version(b"HTTP/1"), version(b"HTTP/1.1.1"),
        version(b"HTTP/9.9"), version(b"HTTP/1.1 "), version(b"HTTP/A.B"), version(b""),
        version(b"HTTP/1.0", why="HTTP/1.0 without keep-alive: answered, then closed",
                closeWithin=CLOSE),
        lambda ctx, rng, route: reject("methods", "HTTP/2 preface", (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",), (400,)),
        target(b"http://%s/healthz", {200, 400, 404}, "RFC 9112 §3.2.2: a server MUST "
               "accept the absolute form; a JSON refusal is safe too"),
        target(b"http://evil.example/healthz", {200, 400, 404}, "the absolute form names "
               "another host; served or refused, it reaches no other host"),
        target(b"https://%s/healthz", {200, 400, 404}, "the absolute form with https"),
        target(b"//healthz", {200, 400, 404}, "an empty first segment may be collapsed"),
        target(b"http://user:pass@%s/healthz", {200, 400, 404}, "userinfo in the absolute "
               "form is deprecated (RFC 9110 §4.2.4); served or refused"),
        target(b"*", (400, 404)),
        target(b"*", (400, 404, 405), m=b"POST"),
        target(b"*", {200, 204, 400, 404, 405}, "OPTIONS * asks about the server as a whole",
               m=b"OPTIONS"),
        target(b"%s", (400, 404)),
        target(b"healthz", (400, 404)),
        extra([(b"Connection", b"close")], "Connection: close", (),
              "a valid request; the node closes the connection after it", closeWithin=CLOSE),
        extra([(b"Connection", b"keep-alive, close")], "Connection: keep-alive, close", (),
              "close wins: the node closes the connection after it", closeWithin=CLOSE),
        lambda ctx, rng, route: valid(
            "methods", f"HTTP/1.0 keep-alive [{route.name}]", route.build(
                ctx, [(b"Connection", b"keep-alive")], version=b"HTTP/1.0"), {route.ok},
            "HTTP/1.0 with keep-alive: the connection may stay open for the next request"),
        extra([(b"Expect", b"100-continue")], "Expect: 100-continue", (),
              "100-continue with the body sent at once"),
        extra([(b"Expect", b"hostile")], "unknown Expect", (417,),
              "RFC 9110 §10.1.1: an unknown expectation MAY be answered 417 or ignored"),
        extra([(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], "Upgrade websocket",
              (400,), "an upgrade a node does not offer is ignored (never 101)"),
        extra([(b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c"),
               (b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA")], "Upgrade h2c", (400,),
              "an upgrade a node does not offer is ignored (never 101)"),
    ]


def methods(ctx, rng):
    return endless("methods", _methods(ctx), ctx, rng)


# -- limits


def _limits(ctx: Context) -> list[Template]:
    send = b"/v1/conversations/dm:alice:bob/messages"

    def sendHead(ctx, lines):
        return (b"POST " + send + b" HTTP/1.1\r\nHost: " + ctx.host + b"\r\nAuthorization: "
                b"Bearer " + ctx.tokens["alice"].encode() + b"\r\nContent-Type: "
                b"application/json\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n")

    def atOnce(length: bytes, statuses=(413,), path=send, auth=True):
        # Only the head is sent: the answer must not wait for the body.
        def make(ctx, rng, route):
            head = sendHead(ctx, [b"Content-Length: " + length]).replace(send, path, 1)
            if not auth:
                head = head.replace(b"Authorization: Bearer " + ctx.tokens["alice"].encode()
                                    + b"\r\n", b"", 1)
            return reject("limits", f"Content-Length {length[:24].decode()} on {path.decode()}",
                          (head,), statuses, closeWithin=CLOSE, deadline=AT_ONCE)
        return make

    def chunked(ctx, rng, route):
        marker = ctx.marker()
        start = b'{"text": "%s"' % marker.encode()
        chunk = b"%x\r\n%s\r\n" % (8192, b" " * 8192)
        count = ctx.max_body_bytes // 8192 + 3
        return reject("limits", "chunked body over max_body_bytes",
                      [sendHead(ctx, [b"Transfer-Encoding: chunked"]) + b"%x\r\n%s\r\n"
                       % (len(start), start)] + [chunk] * count + [b"1\r\n}\r\n0\r\n\r\n"],
                      (413,), ("too_large",), closeWithin=CLOSE, marker=marker)

    def oneChunk(ctx, rng, route):
        # One chunk declared four times the limit, its data sent in pieces.
        size = ctx.max_body_bytes * 4
        head = sendHead(ctx, [b"Transfer-Encoding: chunked"]) + b"%x\r\n{" % size
        return reject("limits", "a chunk over max_body_bytes",
                      [head] + [b" " * 8192] * (ctx.max_body_bytes // 8192 + 3), (400, 413),
                      closeWithin=CLOSE)

    def atLimit(ctx, rng, route):
        marker = ctx.marker()
        body = b'{"text": "' + marker.encode() + b'"}'
        body += b" " * (ctx.max_body_bytes - len(body) - 1) + b"x"
        return reject("limits", "a body of exactly max_body_bytes, bad JSON",
                      sendHead(ctx, [b"Content-Length: %d" % len(body)]) + body, (400,),
                      ("bad_json",), marker=marker)

    def headers(n: int, size: int, statuses, name, why=""):
        def make(ctx, rng, route):
            extra = [(b"X-H%d" % i, b"v" * size) for i in range(n)]
            data = route.build(ctx, extra)
            if why:
                return valid("limits", f"{name} [{route.name}]", data, {route.ok}, why)
            return reject("limits", f"{name} [{route.name}]", data, statuses)
        return make

    def target(length: int, statuses, why=""):
        def make(ctx, rng, route):
            data = request(b"GET", b"/healthz?x=" + b"a" * (length - 11), [(b"Host", ctx.host)])
            if why:
                return valid("limits", f"target of {length} bytes", data, statuses, why)
            return reject("limits", f"target of {length} bytes", data, statuses)
        return make

    h, t = ctx.max_head_bytes, ctx.max_target_bytes
    return [
        headers(1, h + 100, (431,), "one header over max_head_bytes"),
        headers(h // 1000 + 2, 1000, (431,), "headers summing over max_head_bytes"),
        headers(ctx.max_headers + 20, 2, (431,), "more than max_headers headers"),
        headers(ctx.max_headers * 3, 0, (431,), "thrice max_headers empty headers"),
        headers(ctx.max_headers - 20, 2, (), "headers under max_headers",
                "a valid request under the header count limit"),
        headers(1, h // 2, (), "a header of half max_head_bytes",
                "a valid request under the head size limit"),
        target(t + 1, (414,)),
        target(t * 2, (414, 431)),
        target(t - 200, {200}, "a valid target under the limit"),
        lambda ctx, rng, route: reject("limits", "a conversation id over max_target_bytes",
                                       request(b"GET", b"/v1/conversations/dm:alice:" +
                                               b"b" * t + b"/events", [(b"Host", ctx.host),
                                                                        ctx.auth()]), (414,)),
        atOnce(b"%d" % (ctx.max_body_bytes + 1)),
        atOnce(b"1000000000000"),
        atOnce(b"9" * 30, (400, 413)),
        atOnce(b"1000000000000", path=b"/healthz"),
        atOnce(b"%d" % (ctx.max_internal_body_bytes + 1), (401, 413),
               b"/internal/v1/notifications", auth=False),
        chunked, oneChunk, atLimit,
        lambda ctx, rng, route: valid(
            "limits", "a valid body in one-byte chunks", TYPING.build(
                ctx, [(b"Transfer-Encoding", b"chunked")], b"".join(
                    b"1\r\n%c\r\n" % c for c in TYPING.body) + b"0\r\n\r\n", length=False),
            {204}, "a valid chunked body"),
        lambda ctx, rng, route: reject(
            "limits", "a body over max_body_bytes in one-byte chunks", TYPING.build(
                ctx, [(b"Transfer-Encoding", b"chunked")], b"1\r\n \r\n" *
                (ctx.max_body_bytes + 100) + b"0\r\n\r\n", length=False), (413,),
            closeWithin=CLOSE),
        # Refused, or skipped and the (bad) typing body answered 400: never held or a 5xx.
        lambda ctx, rng, route: reject(
            "limits", "a chunk extension of 4 max_body_bytes", TYPING.build(
                ctx, [(b"Transfer-Encoding", b"chunked")], b"2;a=" + b"b" *
                (ctx.max_body_bytes * 4) + b"\r\n{}\r\n0\r\n\r\n", length=False),
            (400, 413, 431)),
        lambda ctx, rng, route: reject(
            "limits", "trailers of 4 max_body_bytes", TYPING.build(
                ctx, [(b"Transfer-Encoding", b"chunked")], b"0\r\n" + b"X-T: %s\r\n"
                % (b"t" * 1000) * (ctx.max_body_bytes * 4 // 1000) + b"\r\n", length=False),
            (400, 413, 431)),
        lambda ctx, rng, route: valid(
            "limits", "a target of 2000 parameters", request(
                b"GET", b"/healthz?" + b"&".join([b"a=1"] * 2000), [(b"Host", ctx.host)]),
            {200}, "a valid target under the limit; unknown parameters are ignored"),
    ]


def limits(ctx, rng):
    return endless("limits", _limits(ctx), ctx, rng)


# -- slow clients (a fixed list: each takes seconds)


def slowloris(ctx: Context, count: int) -> list[Attack]:
    """
    C{count} connections trickling a head each, to be run alongside the other attacks.
    """
    head = request(b"GET", b"/healthz", [(b"Host", ctx.host), (b"X-Slow", b"s" * 40)])
    return [Attack("slow", "slowloris", tuple(bytes([b]) for b in head), frozenset({408}),
                   pause=max(0.2, ctx.head_timeout / 8), silentClose=True,
                   deadline=ctx.head_timeout + SLACK) for _ in range(count)]


def slow(ctx: Context, rng: random.Random) -> Iterator[Attack]:
    head = request(b"GET", b"/healthz", [(b"Host", ctx.host)])
    typing = TYPING.build(ctx)
    typingHead, _, typingBody = typing.partition(b"\r\n\r\n")
    typingHead += b"\r\n\r\n"
    headBy = ctx.head_timeout + SLACK
    bodyBy = ctx.body_timeout + SLACK
    yield Attack("slow", "head trickled a byte at a time", tuple(bytes([b]) for b in head),
                 frozenset({408}), pause=max(0.2, ctx.head_timeout / 8), silentClose=True,
                 deadline=headBy)
    yield Attack("slow", "head never finished", (head[:-2],), frozenset({408}),
                 silentClose=True, deadline=headBy)
    yield Attack("slow", "nothing sent", (), frozenset({408}), silentClose=True,
                 deadline=max(ctx.head_timeout, ctx.idle_timeout) + SLACK)
    yield Attack("slow", "body trickled a byte at a time",
                 (typingHead,) + tuple(bytes([b]) for b in typingBody), frozenset({408}),
                 pause=max(0.3, ctx.body_timeout / 8), silentClose=True, deadline=bodyBy)
    yield Attack("slow", "body never finished",
                 (typingHead.replace(b"Content-Length: %d" % len(typingBody),
                                     b"Content-Length: 100"), typingBody),
                 frozenset({408}), silentClose=True, deadline=bodyBy)
    yield Attack("slow", "chunked without the last chunk",
                 (typingHead.replace(b"Content-Length: %d" % len(typingBody),
                                     b"Transfer-Encoding: chunked"),
                  b"%x\r\n%s\r\n" % (len(typingBody), typingBody)),
                 frozenset({408}), silentClose=True, deadline=bodyBy)
    yield Attack("slow", "idle after an answer", (head,), frozenset({200}),
                 why="a valid request; the idle connection is closed afterwards",
                 closeWithin=ctx.idle_timeout + SLACK, probe=False)
    timeout = ctx.idle_timeout + 1
    poll = request(b"GET", b"/v1/conversations/dm:alice:bob/events?after=%d&timeout=%g"
                   % (ctx.victimLastSeq, timeout), [(b"Host", ctx.host), ctx.auth()])
    yield Attack("slow", "a long-poll longer than idle_timeout", (poll,), frozenset({200}),
                 why="a valid long-poll: idle_timeout is suspended while it waits",
                 deadline=timeout + 5)
