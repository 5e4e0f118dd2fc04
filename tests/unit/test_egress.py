"""The egress policy (``batcher._egress``): which addresses a named base may have, how bases match
the configured and allowed ones, what ``extra_headers`` may hold, and the worker's connect-time
check (DNS rebinding, the checked address, SNI), with real sockets on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from batcher._config import Settings
from batcher._egress import (
    ApiBaseNotAllowedError,
    BasePrefix,
    EgressDeniedError,
    EgressPolicy,
    EgressTransport,
    GuardedBackend,
    address_problem,
    check_destination,
    check_extra_headers,
    normalize_allowed_base,
    parse_base,
)
from batcher._exceptions import InvalidRequestError, MissingAPIKeyError
from batcher.evals.errors import SuiteError
from batcher.evals.suite import load_suite

WORKER_KEY = "sk-worker-own-0123456789"

# --- addresses ------------------------------------------------------------------------------------

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("100.64.0.1", "shared (CGNAT)"),
    ("100.127.255.254", "shared (CGNAT)"),
    ("0.0.0.0", "unspecified"),  # noqa: S104
    ("::", "unspecified"),
    ("0.1.2.3", "private"),  # 0.0.0.0/8 ("this network")
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "private"),  # reserved 240/4 (the stdlib lists it as private)
    ("255.255.255.255", "private"),
    ("192.0.2.1", "private"),  # documentation ranges
    ("198.51.100.7", "private"),
    ("2001:db8::1", "private"),
    ("198.18.0.1", "private"),  # benchmarking
    ("fec0::1", "site-local"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.1.2.3", "private"),
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("100::1", "private"),  # discard-only
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "104.18.6.192", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize(("address", "problem"), REFUSED)
def test_non_public_addresses_are_refused_with_their_kind(address: str, problem: str) -> None:
    assert address_problem(address) == problem
    assert address_problem(ipaddress.ip_address(address)) == problem


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(address) is None


# --- parsing and matching bases -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "http://[::1",
        "ftp://host/v1",
        "file:///etc/passwd",
        "gopher://x",
        "http://",
        "host:8000/v1",
        "http://a b/",
        "http://h:99999/",
        "",
        "   ",
        None,
        12,
        "http://exa$mple.com/",
    ],
)
def test_unusable_bases_are_invalid_requests_naming_api_base(value: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_base(value)
    assert caught.value.field == "api_base"


CONFIGURED = BasePrefix.of("https://api.openai.com/v1")
LOCAL = BasePrefix.of("http://localhost:8000/v1")
ORIGIN = BasePrefix.of("http://10.0.0.5:8000")
V6 = BasePrefix.of("http://[fd00::5]:8000/v1")

MATCHES = [
    (CONFIGURED, "https://api.openai.com/v1", True),
    (CONFIGURED, "https://api.openai.com/v1/", True),
    (CONFIGURED, "https://api.openai.com/v1/chat/completions", True),
    (CONFIGURED, "https://API.OpenAI.com/v1/chat/completions", True),  # host names are case-insensitive
    (CONFIGURED, "https://api.openai.com:443/v1/chat/completions", True),  # the default port, spelled out
    (CONFIGURED, "https://api.openai.com/v1/chat/completions?x=1", True),  # queries are ignored
    (CONFIGURED, "https://api.openai.com/v1/./chat/completions", True),
    (CONFIGURED, "https://api.openai.com.evil.com/v1", False),
    (CONFIGURED, "https://api.openai.com@evil.com/v1", False),
    (CONFIGURED, "https://evil.com#@api.openai.com/v1", False),
    (CONFIGURED, "https://evil.com/api.openai.com/v1", False),
    (CONFIGURED, "https://api.openai.com./v1", False),  # another name: not trusted (the safe direction)
    (CONFIGURED, "http://api.openai.com/v1", False),  # another scheme
    (CONFIGURED, "https://api.openai.com:8443/v1", False),  # another port
    (CONFIGURED, "https://api.openai.com/v10", False),  # a prefix ends at a segment boundary
    (CONFIGURED, "https://api.openai.com/v1x/chat", False),
    (CONFIGURED, "https://api.openai.com/", False),
    (CONFIGURED, "https://api.openai.com/v1/../admin", False),  # dot segments are resolved first
    (CONFIGURED, "https://api.openai.com/v1/%2e%2e/admin", False),  # escapes a server could decode
    (CONFIGURED, "https://api.openai.com/v1/..%2fadmin", False),
    (CONFIGURED, "https://api.openai.com/v1/..;/admin", False),  # Tomcat's path parameter trick
    (CONFIGURED, "https://api.openai.com/v1/..\\admin", False),
    (CONFIGURED, "https://\u0430pi.openai.com/v1", False),  # a Cyrillic "a": another (IDNA) name
    (LOCAL, "http://localhost:8000/v1/chat/completions", True),
    (LOCAL, "http://localhost:8001/v1/chat/completions", False),
    (LOCAL, "http://localhost/v1", False),
    (LOCAL, "http://127.0.0.1:8000/v1", False),  # the same machine by another name is another base
    (ORIGIN, "http://10.0.0.5:8000", True),
    (ORIGIN, "http://10.0.0.5:8000/anything/v1/chat/completions", True),
    (ORIGIN, "http://10.0.0.5:8000/%2e%2e/x", False),
    (ORIGIN, "http://10.0.0.50:8000/", False),
    (V6, "http://[fd00::5]:8000/v1/chat/completions", True),
    (V6, "http://[fd00::6]:8000/v1", False),
]


@pytest.mark.parametrize(("base", "url", "expected"), MATCHES)
def test_base_matching_is_exact_on_origin_and_a_segment_prefix_on_path(
    base: BasePrefix, url: str, expected: bool
) -> None:
    assert base.matches(httpx.URL(url)) is expected


def test_allowed_bases_are_normalised_and_credentials_queries_and_other_schemes_refused() -> None:
    assert normalize_allowed_base("HTTP://GW.Internal:80/v1/") == "http://gw.internal/v1"
    assert normalize_allowed_base("https://[FD00::5]:8443") == "https://[fd00::5]:8443"
    for bad in ("https://user:pw@gw.internal/v1", "https://gw.internal/v1?k=1", "ftp://gw", "http://[::1"):
        with pytest.raises(ValueError, match="BATCHER_ALLOWED_API_BASES"):
            normalize_allowed_base(bad)


def test_the_setting_takes_a_json_list_or_a_comma_separated_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHER_ALLOWED_API_BASES", '["http://10.0.0.5:8000/v1/", "https://gw.internal"]')
    assert Settings().allowed_api_bases == ["http://10.0.0.5:8000/v1", "https://gw.internal"]
    monkeypatch.setenv("BATCHER_ALLOWED_API_BASES", " http://localhost:8000/v1 , https://gw.internal ")
    assert Settings().allowed_api_bases == ["http://localhost:8000/v1", "https://gw.internal"]
    monkeypatch.setenv("BATCHER_ALLOWED_API_BASES", "")
    assert Settings().allowed_api_bases == []
    monkeypatch.setenv("BATCHER_ALLOWED_API_BASES", "gopher://x")
    with pytest.raises(ValidationError, match="not an http"):
        Settings()


# --- the policy -----------------------------------------------------------------------------------

ENV = {"OPENAI_API_KEY": WORKER_KEY, "OPENAI_BASE_URL": "http://localhost:8000/v1", "CO_API_KEY": "co-worker"}


def policy(*allowed: str) -> EgressPolicy:
    return EgressPolicy.from_settings(Settings(allowed_api_bases=list(allowed)), ENV)


def resolver(table: dict[str, list[str]]) -> Any:
    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise OSError("no such name")
        return table[host]

    return resolve


def test_configured_bases_come_from_the_environment_else_the_public_endpoint() -> None:
    p = policy()
    assert str(p.configured["openai"]) == "http://localhost:8000/v1"
    assert str(p.configured["anthropic"]) == "https://api.anthropic.com"
    assert p.worker_keys == ("co-worker", WORKER_KEY)
    # A malformed variable trusts nothing for its provider and breaks nothing else.
    broken = EgressPolicy.from_settings(Settings(), {"OPENAI_BASE_URL": "ftp://x"})
    assert "openai" not in broken.configured and "anthropic" in broken.configured


def test_a_named_base_needs_its_own_key_unless_configured_for_that_provider_or_allowed() -> None:
    p = policy("http://10.0.0.5:8000/v1")
    # the configured base of the same provider: the worker's key may go there
    assert p.check_named_base("openai", "http://localhost:8000/v1/", own_key=False).host == "localhost"
    # another provider's configured base is not the OpenAI key's
    with pytest.raises(MissingAPIKeyError) as caught:
        p.check_named_base("openai", "https://api.anthropic.com", own_key=False)
    assert caught.value.field == "api_key"
    # allowed by the operator: trusted, private or not
    p.check_named_base("anthropic", "http://10.0.0.5:8000/v1", own_key=False)
    for base in ("https://tenant.example/v1", "http://10.0.0.5:8000/admin", "http://localhost:8000/v10"):
        with pytest.raises(MissingAPIKeyError, match="BATCHER_ALLOWED_API_BASES"):
            p.check_named_base("openai", base, own_key=False)
    assert p.key_may_go("openai", "http://localhost:8000/v1") and not p.key_may_go("cohere", "http://localhost:8000/v1")


def test_with_its_own_key_a_named_base_must_be_public() -> None:
    p = policy("http://10.0.0.5:8000")
    names = resolver(
        {
            "tenant.example": ["93.184.215.14"],
            "rebind.example": ["93.184.215.14", "127.0.0.1"],  # every address is checked
            "metadata.example": ["169.254.169.254"],
            "localhost": ["127.0.0.1", "::1"],
            "0x7f.1": ["127.0.0.1"],  # what the C library makes of such hosts
            "2130706433": ["127.0.0.1"],
        }
    )
    assert p.check_named_base("openai", "https://tenant.example/v1", own_key=True, resolve=names)
    p.check_named_base("openai", "https://unknown.example/v1", own_key=True, resolve=names)  # checked at connect
    p.check_named_base("openai", "http://10.0.0.5:8000/v1", own_key=True, resolve=names)  # allowed
    p.check_named_base("openai", "http://localhost:8000/v1", own_key=True, resolve=names)  # configured
    for base, shown in [
        ("http://127.0.0.1:9/v1", "127.0.0.1 is a loopback address"),
        ("http://[::1]:9/v1", "::1 is a loopback address"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.5:9000/v1", "private"),  # allowed is 10.0.0.5:8000 only
        ("http://rebind.example/v1", "rebind.example resolves to an address that is a loopback address"),
        ("http://metadata.example/", "link-local"),
        ("http://localhost:8001/v1", "loopback"),
        ("http://0x7f.1/v1", "loopback"),
        ("http://2130706433/v1", "loopback"),
    ]:
        with pytest.raises(EgressDeniedError, match="BATCHER_ALLOWED_API_BASES") as caught:
            p.check_named_base("openai", base, own_key=True, resolve=names)
        assert shown in str(caught.value)
        assert caught.value.field == "api_base"


def test_without_resolution_only_literal_addresses_are_checked() -> None:
    check_destination(httpx.URL("http://localhost/v1"), None)
    with pytest.raises(EgressDeniedError):
        check_destination(httpx.URL("http://127.0.0.1/v1"), None)


def test_the_permission_error_names_api_base_and_the_cli_flag() -> None:
    err = ApiBaseNotAllowedError()
    assert err.field == "api_base" and "--allow-api-base" in str(err)


# --- extra_headers --------------------------------------------------------------------------------


def test_extra_headers_that_are_fine_pass_as_strings() -> None:
    assert check_extra_headers({"OpenAI-Project": "proj_1", "anthropic-beta": "x,y", "X-Num": 3, "X-Empty": ""}) == {
        "OpenAI-Project": "proj_1",
        "anthropic-beta": "x,y",
        "X-Num": "3",
        "X-Empty": "",
    }


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"Authorization": "Bearer mine"}, "extra_headers.Authorization"),
        ({"authorization": "x"}, "extra_headers.authorization"),
        ({"X-API-Key": "x"}, "extra_headers.X-API-Key"),
        ({"api-key": "x"}, "extra_headers.api-key"),
        ({"Proxy-Authorization": "x"}, "extra_headers.Proxy-Authorization"),
        ({"Cookie": "s=1"}, "extra_headers.Cookie"),
        ({"x-goog-api-key": "x"}, "extra_headers.x-goog-api-key"),
        ({"Host": "evil.com"}, "extra_headers.Host"),
        ({"Content-Length": "0"}, "extra_headers.Content-Length"),
        ({"Transfer-Encoding": "chunked"}, "extra_headers.Transfer-Encoding"),
        ({"Connection": "close"}, "extra_headers.Connection"),
        ({"Content-Type": "text/plain"}, "extra_headers.Content-Type"),
        ({"X-Forwarded-For": "127.0.0.1"}, "extra_headers.X-Forwarded-For"),
        ({"X-Forwarded-Host": "internal"}, "extra_headers.X-Forwarded-Host"),
        ({"Forwarded": "for=127.0.0.1"}, "extra_headers.Forwarded"),
        ({"X-A": "a\r\nAuthorization: Bearer x"}, "extra_headers.X-A"),
        ({"X-A": "a\nb"}, "extra_headers.X-A"),
        ({"X-A": "nul\x00"}, "extra_headers.X-A"),
        ({"X-A": "café"}, "extra_headers.X-A"),
        ({"X-A": "\x7f"}, "extra_headers.X-A"),
        ({"X-A": " padded"}, "extra_headers.X-A"),
        ({"X-A": "x" * 9000}, "extra_headers.X-A"),
        ({"X-A": None}, "extra_headers.X-A"),
        ({"X-A": True}, "extra_headers.X-A"),
        ({"X-A": ["list"]}, "extra_headers.X-A"),
        ({"bad header": "x"}, "extra_headers"),
        ({"X-A:": "x"}, "extra_headers"),
        ({":authority": "x"}, "extra_headers"),
        ({"": "x"}, "extra_headers"),
        ({"X-Ünï": "x"}, "extra_headers"),
        ({f"X-{i}": "v" for i in range(65)}, "extra_headers"),
        ("Authorization: x", "extra_headers"),
    ],
)
def test_extra_headers_cannot_authenticate_reroute_or_be_unsendable(headers: Any, field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_extra_headers(headers)
    assert caught.value.field == field


def test_eval_suites_get_the_same_header_and_base_rules(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text(json.dumps({"prompt": "hi", "expected": "x"}) + "\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: s\ndataset: data.jsonl\n"
        "models:\n  - {model: gpt-4o-mini, params: {extra_headers: {Authorization: Bearer mine}}}\n"
        "  - {model: claude-3-5-haiku-latest, params: {api_base: 'http://169.254.169.254'}}\n"
        "scorers:\n  - type: exact_match\n"
    )
    with pytest.raises(SuiteError) as caught:
        load_suite(suite)
    text = "\n".join(str(p) for p in caught.value.problems)
    assert "authentication headers cannot be set" in text
    assert "api_base" in text


# --- the worker's transport: connect-time checks, on real sockets ---------------------------------


class Recorder:
    """A tiny threaded HTTP(S) server on loopback that records every request and answers a chat completion."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                recorder.requests.append(
                    {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                )
                reply = json.dumps(
                    {"id": "c", "created": 1, "model": "m", "choices": [{"message": {"content": "ok"}}]}
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


class CountingResolver:
    """A resolver stub: each name answers from its list of answers, one per lookup (a rebinding DNS)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = {k: list(v) for k, v in answers.items()}
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        return self.answers[host].pop(0)


def loopback_is_public(address: str) -> str | None:
    """The address rule with 127.0.0.1 standing in for a public address (the tests have no other)."""
    return None if address == "127.0.0.1" else address_problem(address)


def client_for(p: EgressPolicy, backend: GuardedBackend, verify: ssl.SSLContext | None = None) -> httpx.Client:
    transport = EgressTransport(
        p, verify=verify or ssl.create_default_context(), limits=httpx.Limits(max_connections=4), backend=backend
    )
    return httpx.Client(transport=transport, follow_redirects=False, timeout=10)


def chat(client: httpx.Client, url: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return client.post(url, json={"model": "m", "messages": []}, headers=headers)


def test_a_name_that_rebinds_to_loopback_at_connect_time_is_refused(recorder: Recorder) -> None:
    # Public at submission (first answer), loopback when the worker connects (second answer).
    dns = CountingResolver({"tenant.example": [["93.184.215.14"], ["127.0.0.1"]]})
    p = policy()
    p.check_named_base("openai", f"http://tenant.example:{recorder.port}/v1", own_key=True, resolve=dns)
    with client_for(p, GuardedBackend(dns)) as client, pytest.raises(EgressDeniedError, match="loopback"):
        chat(client, f"http://tenant.example:{recorder.port}/v1/chat/completions", "sk-tenant")
    assert dns.lookups == ["tenant.example", "tenant.example"]
    assert recorder.requests == []


def test_the_connection_goes_to_the_checked_address_and_host_stays_the_name(recorder: Recorder) -> None:
    dns = CountingResolver({"tenant.example": [["127.0.0.1"]]})  # not resolvable by the system: proves the stub
    with client_for(policy(), GuardedBackend(dns, check=loopback_is_public)) as client:
        response = chat(client, f"http://tenant.example:{recorder.port}/v1/chat/completions", "sk-tenant")
        response.read()
    assert response.status_code == 200
    assert response.extensions["batcher.egress"] == "named"
    assert dns.lookups == ["tenant.example"]
    assert recorder.requests[0]["headers"]["host"] == f"tenant.example:{recorder.port}"


def test_every_address_of_a_name_is_checked_and_a_later_public_one_does_not_excuse_a_private_one(
    recorder: Recorder,
) -> None:
    dns = CountingResolver({"tenant.example": [["127.0.0.1", "10.0.0.1"]]})
    backend = GuardedBackend(dns, check=loopback_is_public)
    with client_for(policy(), backend) as client, pytest.raises(EgressDeniedError, match="private"):
        chat(client, f"http://tenant.example:{recorder.port}/v1/chat/completions", "sk-tenant")
    assert recorder.requests == []


def test_a_literal_loopback_base_is_refused_before_any_socket_opens(recorder: Recorder) -> None:
    with client_for(policy(), GuardedBackend()) as client, pytest.raises(EgressDeniedError, match="loopback"):
        chat(client, f"http://127.0.0.1:{recorder.port}/v1/chat/completions", "sk-tenant")
    assert recorder.requests == []


def test_configured_and_allowed_bases_go_out_unguarded_with_the_worker_key(recorder: Recorder) -> None:
    base = f"http://127.0.0.1:{recorder.port}/v1"
    configured = EgressPolicy.from_settings(Settings(), {"OPENAI_BASE_URL": base, "OPENAI_API_KEY": WORKER_KEY})
    allowed = EgressPolicy.from_settings(Settings(allowed_api_bases=[base]), {"OPENAI_API_KEY": WORKER_KEY})
    for p in (configured, allowed):
        with client_for(p, GuardedBackend()) as client:
            response = chat(client, f"{base}/chat/completions", WORKER_KEY)
        assert response.status_code == 200 and "batcher.egress" not in response.extensions
    assert [r["headers"]["authorization"] for r in recorder.requests] == [f"Bearer {WORKER_KEY}"] * 2
    # the same server on another path is not the configured base: guarded (and loopback: refused)
    with client_for(configured, GuardedBackend()) as client, pytest.raises(EgressDeniedError):
        chat(client, f"http://127.0.0.1:{recorder.port}/admin", "sk-tenant")


def test_a_worker_key_never_leaves_for_a_named_base_whatever_the_header(recorder: Recorder) -> None:
    dns = CountingResolver({"tenant.example": [["127.0.0.1"]] * 4})
    with client_for(policy(), GuardedBackend(dns, check=loopback_is_public)) as client:
        for headers in ({"authorization": f"Bearer {WORKER_KEY}"}, {"x-api-key": WORKER_KEY}, {"x-a": WORKER_KEY}):
            with pytest.raises(EgressDeniedError, match="worker's provider key"):
                client.post(f"http://tenant.example:{recorder.port}/v1/chat/completions", headers=headers)
        with pytest.raises(EgressDeniedError):
            client.post(f"http://tenant.example:{recorder.port}/v1/chat/completions?k={WORKER_KEY}")
    assert recorder.requests == []


def test_unix_sockets_are_not_reachable() -> None:
    with pytest.raises(EgressDeniedError):
        GuardedBackend().connect_unix_socket("/var/run/docker.sock")


def test_a_name_that_does_not_resolve_is_a_connection_error_not_a_refusal() -> None:
    with client_for(policy(), GuardedBackend(resolver({}))) as client, pytest.raises(httpx.ConnectError):
        chat(client, "http://nowhere.example/v1/chat/completions", "sk-tenant")


def _tls_for(name: str, tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``name`` only, and a client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


def test_tls_to_the_checked_address_still_verifies_and_names_the_host(tmp_path: Path) -> None:
    server_tls, client_tls = _tls_for("tenant.example", tmp_path)
    server = Recorder(server_tls)
    seen_sni: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment,misc]
    try:
        dns = CountingResolver({"tenant.example": [["127.0.0.1"]], "other.example": [["127.0.0.1"]]})
        with client_for(policy(), GuardedBackend(dns, check=loopback_is_public), client_tls) as client:
            response = chat(client, f"https://tenant.example:{server.port}/v1/chat/completions", "sk-tenant")
            assert response.status_code == 200
            # the certificate is for tenant.example: another name at the same address fails verification
            with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|hostname"):
                chat(client, f"https://other.example:{server.port}/v1/chat/completions", "sk-tenant")
    finally:
        server.close()
    assert seen_sni[0] == "tenant.example"
    assert server.requests[0]["headers"]["host"] == f"tenant.example:{server.port}"


def test_a_redirect_is_never_followed(recorder: Recorder) -> None:
    target = Recorder()

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("location", f"http://127.0.0.1:{target.port}/v1/chat/completions")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{redirector.server_address[1]}/v1"
    try:
        p = EgressPolicy.from_settings(Settings(), {"OPENAI_BASE_URL": base, "OPENAI_API_KEY": WORKER_KEY})
        with client_for(p, GuardedBackend()) as client:
            response = chat(client, f"{base}/chat/completions", WORKER_KEY)
        assert response.status_code == 307
    finally:
        redirector.shutdown()
        redirector.server_close()
        target.close()
    assert target.requests == []


def test_trusted_bases_keep_the_environment_proxy_and_named_bases_never_use_it(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{recorder.port}")
    p = EgressPolicy.from_settings(Settings(), {"OPENAI_BASE_URL": "http://provider.internal/v1"})
    with client_for(p, GuardedBackend(resolver({}))) as client:
        assert chat(client, "http://provider.internal/v1/chat/completions", "k").status_code == 200
        with pytest.raises(httpx.ConnectError):  # a named base is connected directly (and does not resolve)
            chat(client, "http://tenant.example/v1/chat/completions", "sk-tenant")
    assert [r["path"] for r in recorder.requests] == ["http://provider.internal/v1/chat/completions"]


def test_the_backend_connects_to_each_checked_address_in_turn() -> None:
    class Inner(httpcore.SyncBackend):
        def __init__(self) -> None:
            self.hosts: list[str] = []

        def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
            self.hosts.append(host)
            raise httpcore.ConnectError("refused")

    inner = Inner()
    backend = GuardedBackend(resolver({"tenant.example": ["93.184.215.14", "2606:2800:21f::1"]}), inner)
    with pytest.raises(httpcore.ConnectError):
        backend.connect_tcp("tenant.example", 443)
    assert inner.hosts == ["93.184.215.14", "2606:2800:21f::1"]


@pytest.mark.parametrize("value", ["x\n", "x\r\n", "x\n\n"])
def test_a_header_value_ending_in_a_line_break_is_refused(value: str) -> None:
    """``$`` also matches before a final newline: the rules match the whole value."""
    with pytest.raises(InvalidRequestError, match=r"extra_headers\.X-Tag"):
        check_extra_headers({"X-Tag": value})
    with pytest.raises(InvalidRequestError):
        check_extra_headers({"X-Tag\n": "x"})
