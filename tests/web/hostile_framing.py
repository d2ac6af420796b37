"""
Hostile input at the framing of HTTP/1.1: malformed and ambiguous message framing, requests
smuggled behind it, and attempts to split the answer's headers (see L{tests.web.hostile}).
"""

from __future__ import annotations

from tests.web.hostile import (
    CLOSE,
    INJECTED,
    ROUTES,
    TYPING,
    Attack,
    Context,
    Template,
    endless,
    reject,
    request,
    sendRequest,
    valid,
)

# -- framing


def _framing(ctx: Context) -> list[Template]:
    def r(name, make, statuses=(400,), **kw):
        return lambda ctx, rng, route: reject("framing", f"{name} [{route.name}]",
                                              make(ctx, rng, route), statuses, **kw)

    def ok(name, make, why, extra=(400,)):
        return lambda ctx, rng, route: valid("framing", f"{name} [{route.name}]",
                                             make(ctx, rng, route),
                                             {route.ok, *extra}, why)

    def head(route, ctx, lines, body=b"", eol=b"\r\n"):
        first = route.method + b" " + route.target + b" HTTP/1.1"
        return eol.join([first] + [b"%s: %s" % h for h in route.headers(ctx)] + lines) + \
            eol + eol + body

    def cl(value, body=b"{}"):
        return lambda ctx, rng, route: head(route, ctx, [b"Content-Length: " + value], body)

    def line(raw):
        return lambda ctx, rng, route: head(route, ctx, [raw])

    bad = [
        r("CL and TE", lambda c, g, rt: head(rt, c, [b"Content-Length: 5",
                                                     b"Transfer-Encoding: chunked"],
                                             b"0\r\n\r\n"), closeWithin=CLOSE),
        r("two different Content-Length", lambda c, g, rt: head(
            rt, c, [b"Content-Length: 2", b"Content-Length: 3"], b"{} "), closeWithin=CLOSE),
        r("Content-Length list of different values", cl(b"2, 3", b"{} "), closeWithin=CLOSE),
        r("negative Content-Length", cl(b"-2")),
        r("Content-Length overflowing 64 bits", cl(b"18446744073709551618"), (400, 413)),
        r("Content-Length of 100 digits", cl(b"9" * 100), (400, 413)),
        r("hex Content-Length", cl(b"0x2")),
        r("Content-Length with a plus sign", cl(b"+2")),
        r("Content-Length with an inner space", cl(b"1 1", b"{}" * 6)),
        r("Content-Length with a decimal point", cl(b"2.0")),
        r("Content-Length in exponent form", cl(b"2e0")),
        r("empty Content-Length", cl(b"", b"")),
        r("Content-Length with a NUL", cl(b"2\x00", b"{}")),
        r("Content-Length with fullwidth digits", cl("２".encode(), b"{}")),
        r("chunk size not hex", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b"zz\r\n{}\r\n0\r\n\r\n")),
        r("negative chunk size", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b"-2\r\n{}\r\n0\r\n\r\n")),
        r("chunk size 0x-prefixed", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b"0x2\r\n{}\r\n0\r\n\r\n")),
        r("chunk size overflowing 64 bits", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b"10000000000000002\r\n{}\r\n0\r\n\r\n"),
          (400, 413)),
        r("chunk size with an empty extension", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b"2;\r\n{}\r\n0\r\n\r\n")),
        r("chunk extension with an unterminated quote", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b'2;a="b\r\n{}\r\n0\r\n\r\n')),
        r("chunk extension with a NUL", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b"2;a=\x00\r\n{}\r\n0\r\n\r\n")),
        r("chunk data longer than its size", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b"1\r\n{}\r\n0\r\n\r\n")),
        r("chunk not ended by CRLF", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b"2\r\n{}XX0\r\n\r\n")),
        r("a request line instead of the last chunk", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"],
            b"2\r\n{}\r\nGET /healthz HTTP/1.1\r\n\r\n")),
        r("trailer field with a bare CR", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b"0\r\nX-T: a\rb\r\n\r\n")),
        r("trailer line without colon", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b"0\r\nnocolon\r\n\r\n")),
        r("chunked applied twice", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked, chunked"], b"0\r\n\r\n")),
        r("Transfer-Encoding not ending in chunked", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked, identity"], b"0\r\n\r\n"), closeWithin=CLOSE),
        r("unknown Transfer-Encoding", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: x-hostile"], b""), closeWithin=CLOSE),
        r("Transfer-Encoding in HTTP/1.0", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding: chunked"], b"0\r\n\r\n").replace(
                b"HTTP/1.1", b"HTTP/1.0", 1), closeWithin=CLOSE),
        r("CR in a header name", line(b"X-Ho\rstile: 1")),
        r("LF in a header name", line(b"X-Ho\nstile: 1")),
        r("NUL in a header name", line(b"X-Ho\x00stile: 1")),
        r("bare CR in a header value", line(b"X-Hostile: a\rb")),
        r("NUL in a header value", line(b"X-Hostile: a\x00b")),
        r("DEL in a header value", line(b"X-Hostile: a\x7fb")),
        r("control character in a header value", line(b"X-Hostile: a\x01b")),
        r("header without colon", line(b"X-Hostile")),
        r("space before the colon", line(b"X-Hostile : 1")),
        r("tab before the colon", line(b"X-Hostile\t: 1")),
        r("empty header name", line(b": 1")),
        r("header name with a slash", line(b"X/Hostile: 1")),
        r("header name with a non-ASCII byte", line(b"X-Hostil\xe9: 1")),
        r("NUL in the target", lambda c, g, rt: rt.build(c).replace(
            rt.target, rt.target + b"\x00", 1)),
        r("bare CR in the target", lambda c, g, rt: rt.build(c).replace(
            rt.target, rt.target + b"\rX", 1)),
        r("bare LF in the target", lambda c, g, rt: rt.build(c).replace(
            rt.target, rt.target + b"\nX", 1)),
        r("tab in the target", lambda c, g, rt: rt.build(c).replace(
            rt.target, rt.target + b"\tX", 1)),
        r("control character in the target", lambda c, g, rt: rt.build(c).replace(
            rt.target, rt.target + b"\x01", 1)),
        r("space in the target", lambda c, g, rt: rt.build(c).replace(
            rt.target, rt.target + b" X", 1)),
        r("version not HTTP", lambda c, g, rt: rt.build(c).replace(
            b"HTTP/1.1\r\n", b"HTTQ/1.1\r\n", 1)),
        r("no Host header", lambda c, g, rt: request(
            rt.method, rt.target, [h for h in rt.headers(c) if h[0] != b"Host"], rt.body)),
        r("two Host headers", lambda c, g, rt: rt.build(c, [(b"Host", b"other.example")])),
        r("Host with a space", lambda c, g, rt: request(
            rt.method, rt.target, [(b"Host", b"a b")] + rt.headers(c)[1:], rt.body)),
        r("header line of 20000 bytes", lambda c, g, rt: rt.build(
            c, [(b"X-Long", b"a" * 20000)]), (431,)),
        r("request line of 20000 bytes", lambda c, g, rt: rt.build(c).replace(
            b" HTTP/1.1", b"?" + b"a" * 20000 + b" HTTP/1.1", 1), (414, 431)),
        r("method of 5000 letters", lambda c, g, rt: rt.build(c).replace(
            rt.method, b"G" * 5000, 1), (400, 405, 414, 431)),
        r("a whitespace-started first header line", lambda c, g, rt: rt.build(c).replace(
            b"\r\nHost:", b"\r\n Host:", 1)),
    ]
    oddButValid = [
        ok("duplicate equal Content-Length", lambda c, g, rt: head(
            rt, c, [b"Content-Length: 0", b"Content-Length: 0"]),
           "RFC 9112 §6.3 lets a recipient take repeated identical values as one"),
        ok("space-padded Content-Length", cl(b" 0 ", b""),
           "spaces around a field value are optional whitespace, not part of it"),
        ok("tab-padded Content-Length", cl(b"\t0\t", b""),
           "tabs around a field value are optional whitespace, not part of it"),
        ok("Content-Length with leading zeros", cl(b"000", b""),
           "Content-Length is 1*DIGIT, so 000 is a valid zero"),
        ok("obs-fold in an unused header", line(b"X-Fold: a\r\n b"),
           "RFC 9112 §5.2 lets a server replace obs-fold by a space instead of refusing"),
        ok("obs-fold in Content-Length", line(b"Content-Length:\r\n 0"),
           "RFC 9112 §5.2: a server MUST refuse an obs-fold or replace it by a space"),
        ok("obs-fold in Transfer-Encoding", lambda c, g, rt: head(
            rt, c, [b"Transfer-Encoding:\r\n chunked"], b"0\r\n\r\n"),
           "RFC 9112 §5.2: a server MUST refuse an obs-fold or replace it by a space"),
        ok("bare LF line ends", lambda c, g, rt: rt.build(c, eol=b"\n"),
           "RFC 9112 §2.2 lets a recipient take a bare LF as a line end"),
        ok("empty line before the request line", lambda c, g, rt: b"\r\n" + rt.build(c),
           "RFC 9112 §2.2 says a server SHOULD ignore an empty line before a request"),
        ok("obs-text in an unused header value", line(b"X-Text: caf\xe9 \xff"),
           "obs-text bytes are allowed in field values (RFC 9110 §5.5)"),
        ok("header with an empty value", line(b"X-Empty:"),
           "an empty field value is valid"),
        ok("a second space after the method", lambda c, g, rt: rt.build(c).replace(
            b" ", b"  ", 1), "RFC 9112 §3 lets a recipient split the request line on "
                             "runs of whitespace"),
    ]
    return bad + oddButValid


# -- smuggling


def _smuggling(ctx: Context) -> list[Template]:
    def typingHead(ctx, lines, version=b"HTTP/1.1"):
        return (b"POST /v1/conversations/dm:alice:bob/typing " + version + b"\r\nHost: "
                + ctx.host + b"\r\nAuthorization: Bearer " + ctx.tokens["alice"].encode()
                + b"\r\nContent-Type: application/json\r\n"
                + b"".join(line + b"\r\n" for line in lines) + b"\r\n")

    def clte(te: bytes, name: str, teFirst=False, close=True):
        # The length covers everything: a node going by Content-Length takes the hidden send
        # as a (bad) typing body; one going by the chunks finds the send behind the last one.
        def make(ctx, rng, route):
            marker = ctx.marker()
            body = b"0\r\n\r\n" + sendRequest(ctx, marker)
            lines = [b"Content-Length: %d" % len(body), te]
            return reject("smuggling", f"CL.TE {name}",
                          typingHead(ctx, lines[::-1] if teFirst else lines) + body,
                          (400,), closeWithin=CLOSE if close else None, marker=marker)
        return make

    def tecl(te: bytes, name: str):
        # The chunk holds the hidden send: a node going by the chunks takes it as the body;
        # one going by Content-Length finds the send right after the chunk-size line.
        def make(ctx, rng, route):
            marker = ctx.marker()
            hidden = sendRequest(ctx, marker)
            size = b"%x\r\n" % len(hidden)
            body = size + hidden + b"\r\n0\r\n\r\n"
            return reject("smuggling", f"TE.CL {name}",
                          typingHead(ctx, [te, b"Content-Length: %d" % len(size)]) + body,
                          (400,), closeWithin=CLOSE, marker=marker)
        return make

    def chunkSize(size: bytes, name: str):
        # A node reading the size leniently as 2 finds the hidden send after the last chunk.
        def make(ctx, rng, route):
            marker = ctx.marker()
            body = size + b"\r\n{}\r\n0\r\n\r\n" + sendRequest(ctx, marker)
            return reject("smuggling", f"chunk size {name}",
                          typingHead(ctx, [b"Transfer-Encoding: chunked"]) + body,
                          (400, 413), closeWithin=CLOSE, marker=marker)
        return make

    def twoLengths(first: bytes, second: bytes, name: str):
        def make(ctx, rng, route):
            marker = ctx.marker()
            hidden = sendRequest(ctx, marker)
            values = [v.replace(b"%d", b"%d" % len(hidden)) for v in (first, second) if v]
            lines = [b"Content-Length: " + v for v in values]
            return reject("smuggling", f"Content-Length {name}",
                          typingHead(ctx, lines) + hidden,
                          (400,), closeWithin=CLOSE, marker=marker)
        return make

    def badLine(line: bytes, name: str):
        # A malformed head must be refused and the connection closed: a node that skips
        # the line and reads on would run the send behind it.
        def make(ctx, rng, route):
            marker = ctx.marker()
            hidden = sendRequest(ctx, marker)
            return reject("smuggling", f"malformed {name} then a send",
                          typingHead(ctx, [line % len(hidden)]) + hidden, (400,),
                          closeWithin=CLOSE, marker=marker)
        return make

    def getBody(ctx, rng, route):
        marker = ctx.marker()
        hidden = sendRequest(ctx, marker)
        return valid("smuggling", "a send as the body of a GET",
                     request(b"GET", b"/healthz", [(b"Host", ctx.host)], hidden),
                     {200, 400}, "a GET may carry a body (RFC 9110 §9.3.1), read and ignored",
                     marker=marker)

    def http10(ctx, rng, route):
        marker = ctx.marker()
        body = b"0\r\n\r\n" + sendRequest(ctx, marker)
        return reject("smuggling", "TE in HTTP/1.0",
                      typingHead(ctx, [b"Transfer-Encoding: chunked"], b"HTTP/1.0") + body,
                      (400,), closeWithin=CLOSE, marker=marker)

    tes = [(b"Transfer-Encoding: chunked", "plain"),
           (b"Transfer-Encoding: Chunked", "capitalised"),
           (b"Transfer-Encoding: xchunked", "xchunked"),
           (b"Transfer-Encoding: chunked, identity", "chunked, identity"),
           (b"Transfer-Encoding: identity, chunked", "identity, chunked"),
           (b"Transfer-Encoding: \tchunked", "tab before"),
           (b"Transfer-Encoding: chunked \t", "whitespace after"),
           (b"Transfer-Encoding: \x0bchunked", "vertical tab"),
           (b"Transfer-Encoding: \x0cchunked", "form feed"),
           (b'Transfer-Encoding: "chunked"', "quoted"),
           (b"Transfer-Encoding: chunk", "chunk"),
           (b"Transfer-Encoding: gzip, chunked", "gzip, chunked"),
           (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity", "twice"),
           (b"Transfer-Encoding: chu\x00nked", "NUL inside")]
    hidden = [(b"Transfer-Encoding : chunked", "space before colon"),
              (b"Transfer-Encoding\t: chunked", "tab before colon"),
              (b" Transfer-Encoding: chunked", "folded onto the previous line"),
              (b"Transfer-Encoding:\r\n chunked", "obs-fold"),
              (b"X-Hostile: 1\nTransfer-Encoding: chunked", "behind a bare LF"),
              (b"X-Hostile: 1\rTransfer-Encoding: chunked", "behind a bare CR"),
              (b"Transfer-Encoding\x00: chunked", "NUL in the name"),
              (b"Transfer-Encoding\r: chunked", "CR in the name")]
    templates: list[Template] = []
    for te, name in tes:
        templates += [clte(te, name), clte(te, name + " (TE first)", True), tecl(te, name)]
    for te, name in hidden:
        # Refused (400) as malformed, or the line is not a Transfer-Encoding and the length
        # makes the send a bad typing body (400): either way nothing is sent.
        templates += [clte(te, name, close=False), clte(te, name + " (TE first)", True, False)]
    for size, name in [(b"+2", "+2"), (b"0x2", "0x2"), (b" 2", "space before"),
                       (b"2\x00", "NUL after"), (b"2\r\r", "CR CR"),
                       (b"10000000000000002", "overflowing to 2"),
                       (b"fffffffffffffffff", "of 17 digits"), (b"2;a=\x01", "control ext")]:
        templates.append(chunkSize(size, name))
    templates += [twoLengths(b"0", b"%d", "0 then the length"),
                  twoLengths(b"%d", b"0", "the length then 0"),
                  twoLengths(b"0, %d", b"", "list 0, length"),
                  twoLengths(b"0 %d", b"", "0 space length"),
                  badLine(b"Content-Length\x00: %d", "NUL in Content-Length name"),
                  badLine(b"Content-Length : %d", "space before Content-Length colon"),
                  badLine(b"X-Hostile: a\rContent-Length: %d", "CR-hidden Content-Length"),
                  badLine(b"X-Hostile: a\x00Content-Length: %d", "NUL-hidden Content-Length"),
                  getBody, http10]
    return templates


def framing(ctx, rng):
    return endless("framing", _framing(ctx), ctx, rng)


def smuggling(ctx, rng):
    return endless("smuggling", _smuggling(ctx), ctx, rng)


# -- response splitting


def _splitting(ctx: Context) -> list[Template]:
    inject = b"X-Injected: " + INJECTED

    def origin(value: bytes, name: str, statuses=(400,), why=""):
        def make(ctx, rng, route):
            data = route.build(ctx, [(b"Origin", value)])
            allowed = set(statuses) | ({route.ok} if why else set())
            return Attack("splitting", f"Origin {name} [{route.name}]", (data,),
                          frozenset(allowed), why=why)
        return make

    def target(suffix: bytes, name: str, statuses, why="", query=False):
        def make(ctx, rng, route):
            base = route.target.partition(b"?")
            if query:
                new = base[0] + b"?x=" + suffix + (b"&" + base[2] if base[2] else b"")
            else:
                new = base[0] + suffix + (b"?" + base[2] if base[2] else b"")
            data = route.build(ctx).replace(route.target, new, 1)
            allowed = set(statuses) | ({route.ok} if why else set())
            return Attack("splitting", f"{name} [{route.name}]", (data,), frozenset(allowed),
                          why=why)
        return make

    encoded = b"%0d%0aX-Injected:%20" + INJECTED
    return [
        origin(b"http://a.example\r" + inject, "with a bare CR"),
        origin(b"http://a.example\x00" + inject, "with a NUL"),
        origin(b"http://a.example\n" + inject, "with a bare LF", why="a bare LF may end "
               "the line (RFC 9112 §2.2); X-Injected is then only a request header"),
        origin(b"http://a.example\r\n " + inject, "folded", why="an obs-fold may become a "
               "space (RFC 9112 §5.2); the reflected value then has no line break"),
        origin(b"http://a.example" + encoded, "with %0d%0a", why="percent signs are plain "
               "characters in a header; reflecting them splits nothing"),
        origin(b"http://a.example\xc2\x85" + inject, "with a UTF-8 NEL", why="NEL is "
               "obs-text in HTTP, not a line end"),
        origin("http://a.example\u2028".encode() + inject, "with a UTF-8 line separator",
               why="U+2028 is obs-text in HTTP, not a line end"),
        target(encoded, "%0d%0a in the path", (400, 404)),
        target(b"\r" + inject, "bare CR in the path", (400,)),
        target(encoded, "%0d%0a in the query", (400,), query=True,
               why="an unknown query parameter may be ignored"),
        lambda ctx, rng, route: reject(
            "splitting", "%0d%0a in access_token",
            request(b"GET", b"/v1/inbox/events?timeout=0&access_token=" + encoded,
                    [(b"Host", ctx.host)]), (401,), ("unauthorized",)),
        lambda ctx, rng, route: valid(
            "splitting", "%0d%0a behind /static",
            request(b"GET", b"/static?x=" + encoded, [(b"Host", ctx.host)]),
            {301, 302, 307, 308, 404}, "a redirect to /static/ is a valid answer"),
        lambda ctx, rng, route: reject(
            "splitting", "Host with a bare CR", request(
                b"GET", b"/healthz", [(b"Host", ctx.host + b"\r" + inject)])),
    ]


def splitting(ctx, rng):
    return endless("splitting", _splitting(ctx), ctx, rng)


# -- pipelining


def _pipelining(ctx: Context) -> list[Template]:
    def many(n: int | None):
        def make(ctx, rng, route):
            count = n or rng.randint(2, 60)
            chosen = [rng.choice(ROUTES) for _ in range(count - 1)] + [route]
            return Attack("pipelining", f"{count} valid requests in one write [{route.name}]",
                          (b"".join(r.build(ctx) for r in chosen),), frozenset({route.ok}),
                          why="valid requests, answered in order", answers=count)
        return make

    def thenBad(ctx, rng, route):
        count = rng.randint(1, 5)
        bad = route.build(ctx, [(b"Content-Length", b"5"), (b"Transfer-Encoding",
                                                           b"chunked")]) + b"0\r\n\r\n"
        if route.body is not None:
            bad = bad.replace(b"Content-Length: %d\r\n" % len(route.body), b"", 1)
        return Attack("pipelining", f"{count} valid requests then CL and TE [{route.name}]",
                      (route.build(ctx) * count + bad,), frozenset({400}), answers=count + 1,
                      closeWithin=CLOSE)

    def thenSmuggled(ctx, rng, route):
        marker = ctx.marker()
        hidden = sendRequest(ctx, marker)
        body = b"0\r\n\r\n" + hidden
        bad = request(b"POST", TYPING.target, TYPING.headers(ctx) + [
            (b"Content-Length", b"%d" % len(body)), (b"Transfer-Encoding", b"chunked")],
            body, length=False)
        return Attack("pipelining", f"a valid request then a hidden send [{route.name}]",
                      (route.build(ctx) + bad,), frozenset({400}), answers=2, closeWithin=CLOSE,
                      marker=marker)

    def thenBadJSON(ctx, rng, route):
        marker = ctx.marker()
        bad = sendRequest(ctx, marker).replace(b'{"text": "', b'{"text": "\xff', 1)
        bad = bad.replace(b"Content-Length: %d" % (len(bad.partition(b"\r\n\r\n")[2]) - 1),
                          b"Content-Length: %d" % len(bad.partition(b"\r\n\r\n")[2]), 1)
        return Attack("pipelining", f"valid requests then a bad send [{route.name}]",
                      (route.build(ctx) * 2 + bad,), frozenset({400}),
                      frozenset({"bad_json"}), answers=3, marker=marker)

    return [many(2), many(200), many(None), thenBad, thenSmuggled, thenBadJSON]


def pipelining(ctx, rng):
    return endless("pipelining", _pipelining(ctx), ctx, rng)
