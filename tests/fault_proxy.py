"""A fault-injecting HTTP proxy in front of the moto server.

moto never throttles, never loses a response and ignores ``ClientToken``; real
AWS does all three. Point the AWS environment (``AWS_ENDPOINT_URL``) at
:attr:`FaultProxy.endpoint` instead of moto's and add :class:`Fault` rules:
each matching request is answered with an AWS-shaped error either *before*
it reaches the emulator (throttling: nothing happened) or *after* (a lost
response: it happened, the caller does not know). With
``honour_client_tokens`` a repeated ``RunInstances`` with a ``ClientToken``
gets the first call's response again, as AWS answers for at least a day, even
when that instance has been terminated since; repeated with other parameters
(an AMI that moved) it gets ``IdempotentParameterMismatch``, as from AWS. A
fault with a ``delay`` holds the request first (a slow call, or one a test
kills its caller during). ``ListBuckets`` with ``max-buckets`` is paged as AWS
pages it (moto cuts the list at that size and gives no continuation token),
and with ``paginated_list_buckets_only`` an unpaginated one is refused, as AWS
refuses it for an account allowed more than 10,000 buckets.

Requests are named ``service:Operation`` (``ec2:RunInstances``,
``s3:GetBucketTagging``, ``ssm:GetParameter``): the service from the SigV4
credential scope, the operation from the query-protocol ``Action``, the JSON
protocol's ``X-Amz-Target`` or, for S3, the REST method, path and query.

Use the fixture from a ``conftest.py``::

    from tests.fault_proxy import fault_proxy as fault_proxy
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.etree import ElementTree

import pytest

__all__ = ["Fault", "FaultProxy", "Request", "When", "fault_proxy"]

_SCOPE = re.compile(
    r"Credential=[^/]+/\d{8}/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request")
_S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                         "te", "trailer", "upgrade"})


class When(StrEnum):
    BEFORE = "before"  # answered instead of forwarded: the call had no effect
    AFTER = "after"  # forwarded, then the answer is replaced: the effect is real
    SLOW = "slow"  # forwarded after ``Fault.delay`` seconds, the real answer kept


@dataclass(frozen=True)
class Request:
    """One request as the proxy saw it."""

    service: str
    operation: str
    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]  # the query-protocol body (EC2, RDS), decoded
    region: str = ""  # from the SigV4 credential scope

    @property
    def name(self) -> str:
        return f"{self.service}:{self.operation}"

    def param(self, key: str) -> str | None:
        """A query-protocol parameter (``ClientToken``, ``InstanceId.1``)."""
        values = self.form.get(key) or self.query.get(key)
        return values[0] if values else None


@dataclass
class Fault:
    """Answer ``times`` requests named ``operation`` (and passing ``match``)
    with ``status`` and the AWS error ``code``, ``when`` before or after
    forwarding them, after holding each for ``delay`` seconds (the proxy's
    :meth:`FaultProxy.stop` ends the wait)."""

    operation: str
    code: str = "RequestLimitExceeded"
    status: int = 503
    when: When = When.BEFORE
    times: int = 1
    match: Callable[[Request], bool] | None = None
    message: str = "injected by the test's fault proxy"
    delay: float = 0.0  # seconds each matching request is held first
    hits: int = 0

    def wants(self, request: Request) -> bool:
        return (self.hits < self.times and request.name == self.operation
                and (self.match is None or self.match(request)))


@dataclass
class _Seen:
    request: Request
    status: int
    faulted: bool


@dataclass
class FaultProxy:
    """The proxy; :meth:`start` it (or use the fixture), then :meth:`add` faults."""

    upstream: str
    honour_client_tokens: bool = True
    paginated_list_buckets_only: bool = False
    faults: list[Fault] = field(default_factory=list)
    seen: list[_Seen] = field(default_factory=list)
    arrived: list[Request] = field(default_factory=list)  # answered or not yet
    # ClientToken → the first call's parameters and answer
    _tokens: dict[str, tuple[dict[str, list[str]], int, list[tuple[str, str]], bytes]] = field(
        default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.seen.clear()
            self.arrived.clear()
            self._tokens.clear()

    def calls(self, operation: str) -> list[Request]:
        """Every request named ``operation`` seen so far (faulted ones too)."""
        with self._lock:
            return [s.request for s in self.seen if s.request.name == operation]

    def wait_for(self, operation: str, timeout: float = 60.0) -> Request:
        """The first request named ``operation`` to arrive (held ones too),
        waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = next((r for r in self.arrived if r.name == operation), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {operation} request within {timeout} s")
            time.sleep(0.01)

    def seen_requests(self) -> list[Request]:
        """Every request seen so far, in order."""
        with self._lock:
            return [s.request for s in self.seen]

    def start(self) -> FaultProxy:
        proxy = self
        target = urllib.parse.urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects

            def log_message(self, format: str, *args: object) -> None:
                pass  # a test run would drown in request lines

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = _describe(self.command, self.path, dict(self.headers.items()), body)
                proxy._serve(self, request, body, target)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True,
                         name="fault-proxy").start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # held requests are answered now
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    # -- serving ---------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler, request: Request, body: bytes,
               target: urllib.parse.SplitResult) -> None:
        token = request.param("ClientToken") if request.name == "ec2:RunInstances" else None
        with self._lock:
            self.arrived.append(request)
            fault = next((f for f in self.faults if f.wants(request)), None)
            if fault is not None:
                fault.hits += 1
            remembered = self._tokens.get(token) if token and self.honour_client_tokens else None
        if fault is not None and fault.delay:
            self._stopping.wait(fault.delay)  # this request's own thread: others go on
        if fault is not None and fault.when is When.SLOW:
            fault = None  # only held: forwarded, and the real answer kept
        if remembered is not None and (fault is None or fault.when is When.AFTER):
            first_params, status, headers, payload = remembered
            # AWS answers a known token from memory, if asked the same thing
            if first_params != request.form:
                status, headers, payload = _error(request, Fault(
                    request.name, code="IdempotentParameterMismatch", status=400,
                    message=f"Arguments on this idempotent request are inconsistent with"
                            f" arguments used in previous request(s) with token {token}"))
        elif fault is not None and fault.when is When.BEFORE:
            status, headers, payload = _error(request, fault)
        elif request.name == "s3:ListBuckets":
            status, headers, payload = self._list_buckets(handler, request, body, target)
        else:
            status, headers, payload = _forward(handler, body, target)
            if token and self.honour_client_tokens and status == 200:
                with self._lock:
                    self._tokens.setdefault(token, (request.form, status, headers, payload))
        if fault is not None and fault.when is When.AFTER:
            status, headers, payload = _error(request, fault)
        with self._lock:
            self.seen.append(_Seen(request, status, fault is not None))
        try:
            handler.send_response(status)
            for key, value in headers:
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller is gone (killed while its request was held)


    def _list_buckets(self, handler: BaseHTTPRequestHandler, request: Request, body: bytes,
                      target: urllib.parse.SplitResult) -> tuple[int, list[tuple[str, str]], bytes]:
        """ListBuckets paged the way AWS pages it: ``max-buckets`` per page, an
        opaque ``ContinuationToken`` while more follow."""
        size = request.query.get("max-buckets")
        if size is None:
            if self.paginated_list_buckets_only:
                return _error(request, Fault(
                    "s3:ListBuckets", code="InvalidRequest", status=400,
                    message="this account must send paginated ListBuckets requests"))
            return _forward(handler, body, target)
        after = request.query.get("continuation-token", [""])[0]
        kept = {k: v for k, v in request.query.items()
                if k not in ("max-buckets", "continuation-token")}
        handler.path = request.path + ("?" + urllib.parse.urlencode(kept, doseq=True)
                                       if kept else "")
        status, headers, payload = _forward(handler, body, target)
        if status != 200:
            return status, headers, payload
        root = ElementTree.fromstring(payload)
        listed = root.find(f"{{{_S3_XMLNS}}}Buckets")
        assert listed is not None, payload
        buckets = list(listed)
        names = [b.findtext(f"{{{_S3_XMLNS}}}Name") or "" for b in buckets]
        start = names.index(after) + 1 if after in names else 0
        page = buckets[start:start + int(size[0])]
        for bucket in buckets:
            if bucket not in page:
                listed.remove(bucket)
        if start + len(page) < len(buckets):
            token = ElementTree.SubElement(root, f"{{{_S3_XMLNS}}}ContinuationToken")
            token.text = names[start + len(page) - 1]
        ElementTree.register_namespace("", _S3_XMLNS)
        return status, headers, ElementTree.tostring(root, xml_declaration=True,
                                                     encoding="utf-8")


def _describe(method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Request:
    parts = urllib.parse.urlsplit(raw_path)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    found = _SCOPE.search(headers.get("Authorization", ""))
    service = found["service"] if found else "unknown"
    form: dict[str, list[str]] = {}
    content_type = headers.get("Content-Type", "")
    if "x-www-form-urlencoded" in content_type:
        form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
    target = headers.get("X-Amz-Target")
    if form.get("Action"):
        operation = form["Action"][0]
    elif query.get("Action"):
        operation = query["Action"][0]
    elif target:
        operation = target.rsplit(".", 1)[-1]
    elif service == "s3":
        operation = _s3_operation(method, parts.path, query)
    else:
        operation = f"{method} {parts.path}"
    region = found["region"] if found else ""
    return Request(service, operation, method, parts.path, query, form, region)


_S3_SUBRESOURCES = (("tagging", "BucketTagging"), ("location", "BucketLocation"),
                    ("policy", "BucketPolicy"), ("versioning", "BucketVersioning"))
_S3_VERBS = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}


def _s3_operation(method: str, path: str, query: dict[str, list[str]]) -> str:
    segments = [s for s in path.split("/") if s]
    if not segments:
        return "ListBuckets" if method == "GET" else f"{method} /"
    if len(segments) == 1:
        for key, name in _S3_SUBRESOURCES:
            if key in query and method in _S3_VERBS:
                return _S3_VERBS[method] + name
        return {"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket",
                "GET": "ListObjects"}.get(method, f"{method} bucket")
    return {"PUT": "PutObject", "GET": "GetObject", "DELETE": "DeleteObject",
            "HEAD": "HeadObject"}.get(method, f"{method} object")


def _forward(handler: BaseHTTPRequestHandler, body: bytes,
             target: urllib.parse.SplitResult) -> tuple[int, list[tuple[str, str]], bytes]:
    connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port,
                                            timeout=60)
    try:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        connection.request(handler.command, handler.path, body=body or None, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        kept = [(k, v) for k, v in response.getheaders()
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"]
        return response.status, kept, payload
    finally:
        connection.close()


def _error(request: Request, fault: Fault) -> tuple[int, list[tuple[str, str]], bytes]:
    """The error body each protocol's parser in botocore understands."""
    code, message = fault.code, fault.message
    if request.service == "ec2":
        body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error>"
                f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
                f"<RequestID>fault-proxy</RequestID></Response>")
        return fault.status, [("Content-Type", "text/xml")], body.encode()
    if request.service == "s3":
        body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>"
                f"<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>")
        return fault.status, [("Content-Type", "application/xml")], body.encode()
    if request.form.get("Action") or request.query.get("Action"):  # RDS and other query APIs
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
                f"<Message>{message}</Message></Error><RequestId>fault-proxy</RequestId>"
                f"</ErrorResponse>")
        return fault.status, [("Content-Type", "text/xml")], body.encode()
    body = f'{{"__type": "{code}", "message": "{message}"}}'
    return fault.status, [("Content-Type", "application/x-amz-json-1.1")], body.encode()


@pytest.fixture
def fault_proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    """A fresh proxy in front of the session's moto server (stopped afterwards)."""
    proxy = FaultProxy(moto_endpoint).start()
    try:
        yield proxy
    finally:
        proxy.stop()
