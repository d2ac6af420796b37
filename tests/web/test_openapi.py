"""
Tests for hpchat/web/openapi.json, the OpenAPI 3.1 document of the API: it is valid, it names
exactly the routes a node serves, docs/api.md is generated from it, a real node serves it at
C{GET /v1/openapi.json}, and the answers of a real node, to calls that succeed and to a
bounded property-based run of every operation, are all as it says, and never a 5xx.
"""

from __future__ import annotations

import json
import os
import re
import runpy

from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hpchat.web.api import ChatAPI
from hpchat.web.fast import HotRoutes
from tests.support.cluster import token
from tests.support.node import HTTP, Node
from tests.support.trial import asyncTest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = os.path.join(ROOT, "hpchat", "web", "openapi.json")
METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
# A sample value for each path parameter, to probe the node's routing with.
SAMPLES = {"cid": "dm:alice:bob", "user": "carol", "path": "app.js"}


def _spec() -> dict:
    with open(SPEC, encoding="utf-8") as f:
        return json.load(f)


def _operations(spec: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items()
            for method in item if method in METHODS}


def _openapiPath(rule: str) -> str:
    """
    The OpenAPI path of a werkzeug rule: C{<cid>} is C{{cid}}; Klein's branch below
    C{/static/} (C{<path:__rest__>}, and the bare branch root) is C{/static/{path}}.
    """
    if rule == "/static/":
        return "/static/{path}"
    rule = rule.replace("<path:__rest__>", "{path}")
    return re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", rule)


class _Probe:
    """
    Just enough of a request for L{HotRoutes.find}.
    """

    def __init__(self, method: str, path: str):
        self.method = method.encode("ascii")
        self.path = path.encode("ascii")


class _Handlers:
    def __getattr__(self, name: str):
        # (The event streams' hot handlers are those of api.eventStreams.)
        return self if name == "eventStreams" else name


class DocumentTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """
        The document is a valid OpenAPI 3.1.0 document.
        """
        from openapi_spec_validator import validate
        from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

        spec = _spec()
        self.assertEqual(spec["openapi"], "3.1.0")
        validate(spec)
        broken = dict(spec, paths={"/x": {"get": {"responses": {"200": {}}}}})
        self.assertRaises(OpenAPIValidationError, validate, broken)

    def test_kleinRoutesDocumented(self) -> None:
        """
        Every route of the Klein app (but HEAD, which werkzeug adds to GET) is an operation
        of the document, and every operation is a route of the Klein app or a hot route.
        """
        documented = _operations(_spec())
        served = set()
        for rule in ChatAPI.app.url_map.iter_rules():
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    served.add((method, _openapiPath(rule.rule)))
        self.assertEqual(served - documented, set())
        hot = HotRoutes(_Handlers(), None)
        adapter = ChatAPI.app.url_map.bind("localhost")
        for method, path in documented:
            concrete = path.format(**SAMPLES)
            if hot.find(_Probe(method, concrete)) is not None:
                continue
            endpoint, _ = adapter.match(concrete, method=method)
            self.assertTrue(endpoint, (method, path))

    def test_hotRoutesDocumented(self) -> None:
        """
        Every path and method the hot routes answer themselves is an operation of the
        document.
        """
        documented = _operations(_spec())
        hot = HotRoutes(_Handlers(), None)
        found = set()
        for path in _spec()["paths"]:
            for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
                if hot.find(_Probe(method, path.format(**SAMPLES))) is not None:
                    found.add((method, path))
        for method, tail in hot._conversation:
            if method != b"HEAD":
                # (HEAD of a GET, as werkzeug adds it to Klein's.)
                found.add((method.decode(), "/v1/conversations/{cid}/" + tail.decode()))
        self.assertEqual(len(found), 8)
        self.assertEqual(found - documented, set())

    def test_errorsAreErrors(self) -> None:
        """
        Every 4xx and 5xx answer of every operation has the Error schema, 307 has the
        C{Location} and C{X-HPChat-Owner} headers, and 429 and 503 have C{Retry-After}.
        """
        spec = _spec()
        responses = spec["components"]["responses"]
        for method, path in _operations(spec):
            for status, response in spec["paths"][path][method.lower()]["responses"].items():
                response = responses[response["$ref"].rsplit("/", 1)[1]] \
                    if "$ref" in response else response
                if status[0] in "45" and not (path == "/readyz" and status == "503"):
                    self.assertEqual(
                        response["content"]["application/json"]["schema"],
                        {"$ref": "#/components/schemas/Error"}, (method, path, status))
                if status == "307":
                    self.assertEqual(set(response["headers"]), {"Location", "X-HPChat-Owner"})
                if status in ("429", "503") and path != "/readyz":
                    self.assertIn("Retry-After", response["headers"])

    def test_apiDocUpToDate(self) -> None:
        """
        docs/api.md is what tools/apidoc.py makes of the document.
        """
        apidoc = runpy.run_path(os.path.join(ROOT, "tools", "apidoc.py"))
        with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
            self.assertEqual(f.read(), apidoc["render"](_spec()),
                             "docs/api.md is out of date: run python tools/apidoc.py")


class NodeTests(TestCase):
    """
    Against a real node: C{twistd hpchat} on a free port, with dev login on and long-polls
    cut short so the fuzz run stays bounded.
    """

    timeout = 180

    async def _node(self) -> Node:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        node = Node(workdir, "n1", sections={"auth": {"dev_login": "true"},
                                             "chat": {"max_poll_timeout": "0.2"}})
        self.addCleanup(lambda: node.stop())
        await node.start()
        return node

    @asyncTest
    async def test_served(self) -> None:
        """
        C{GET /v1/openapi.json} answers the document as JSON; a call of every operation that
        succeeds gets the status, content type, headers and body the document gives; then
        every operation, fuzzed by schemathesis from the document with a valid token, never
        gets a 5xx nor an answer the document does not describe.
        """
        node = await self._node()
        http = HTTP()
        self.addCleanup(http.close)
        status, headers, body = await http.request("GET", node.url + "/v1/openapi.json")
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(body, _spec())
        answered = await threads.deferToThread(_scenario, node.url, token("alice"))
        self.assertEqual(answered, SCENARIO_STATUSES)
        tested = await threads.deferToThread(_fuzz, node.url, token("alice"))
        self.assertEqual(tested, len(_operations(_spec()) - _streaming(_spec())))
        self.assertNotIn("Traceback", node.log())


CID = "dm:alice:bob"
SEND = {"text": "hi", "client_id": "c1"}
# Calls that succeed, in order (the second send repeats the first's client_id), as
# (method, path, path parameters, query, body).
SCENARIO = [
    ("POST", "/v1/conversations/{cid}/messages", {"cid": CID}, None, SEND),
    ("POST", "/v1/conversations/{cid}/messages", {"cid": CID}, None, SEND),
    ("POST", "/v1/conversations/{cid}/typing", {"cid": CID}, None, {"typing": True}),
    ("GET", "/v1/conversations/{cid}/events", {"cid": CID}, {"after": 0, "timeout": 0}, None),
    ("GET", "/v1/conversations/{cid}/messages", {"cid": CID}, {"limit": 10}, None),
    ("POST", "/v1/conversations/{cid}/read", {"cid": CID}, None, {"seq": 1}),
    ("GET", "/v1/conversations", None, {"limit": 5}, None),
    ("GET", "/v1/inbox/events", None, {"timeout": 0}, None),
    ("PUT", "/v1/blocks/{user}", {"user": "carol"}, None, None),
    ("GET", "/v1/blocks", None, None, None),
    ("DELETE", "/v1/blocks/{user}", {"user": "carol"}, None, None),
    ("GET", "/v1/presence", None, {"users": "alice,bob"}, None),
    ("GET", "/v1/cluster", None, None, None),
    ("POST", "/v1/dev/login", None, None, {"user": "bob"}),
    ("GET", "/healthz", None, None, None),
    ("GET", "/readyz", None, None, None),
    ("GET", "/v1/openapi.json", None, None, None),
    ("GET", "/metrics", None, None, None),
    ("GET", "/", None, None, None),
    ("GET", "/static/{path}", {"path": "app.js"}, None, None),
]
SCENARIO_STATUSES = [201, 200, 204, 200, 200, 200, 200, 200, 204, 200, 204, 200, 200, 200,
                     200, 200, 200, 200, 200, 200]
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance")


def _checks() -> list:
    import schemathesis.checks

    return [getattr(schemathesis.checks, name) for name in CHECKS]


def _scenario(base: str, bearer: str) -> list[int]:
    """
    Make the L{SCENARIO} calls to the node at C{base}, each answer checked against the
    document; their statuses. Run in a thread: schemathesis calls with blocking C{requests}.
    """
    import requests
    import schemathesis

    schema = schemathesis.openapi.from_path(SPEC)
    statuses = []
    with requests.Session() as session:
        for method, path, parameters, query, body in SCENARIO:
            operation = schema[path][method]
            case = operation.Case(path_parameters=parameters, query=query,
                                  **({} if body is None else {"body": body}))
            response = case.call(base_url=base, session=session, timeout=10,
                                 headers={"Authorization": f"Bearer {bearer}"})
            case.validate_response(response, checks=_checks())
            statuses.append(response.status_code)
    return statuses


def _streaming(spec: dict) -> set[tuple[str, str]]:
    """
    The operations whose answer is an event stream, held open (tests.web.test_sse reads them).
    """
    return {(method, path) for method, path in _operations(spec)
            if "text/event-stream" in spec["paths"][path][method.lower()]["responses"]
            .get("200", {}).get("content", {})}


def _fuzz(base: str, bearer: str) -> int:
    """
    Run every operation of the document against the node at C{base} with a few generated
    cases each (derandomized), failing on any 5xx; the number of operations run. The event
    streams (L{_streaming}) are left out: a request that succeeds never ends.

    Run in a thread: schemathesis calls with blocking C{requests}.
    """
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_path(SPEC)
    session = requests.Session()
    checks = _checks()
    tested = 0
    streaming = _streaming(_spec())
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in streaming:
            continue

        @settings(max_examples=12, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), print_blob=False)
        @given(case=operation.as_strategy())
        def run(case) -> None:
            response = case.call(base_url=base, session=session, timeout=10,
                                 headers={"Authorization": f"Bearer {bearer}"})
            case.validate_response(response, checks=checks)

        run()
        tested += 1
    session.close()
    return tested

