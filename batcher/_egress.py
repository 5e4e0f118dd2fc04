"""Where provider requests may go, and with whose key: the egress policy.

Every provider call goes to a *base URL* (``api_base``). There are three kinds:

* **configured**: a provider's base from the process's environment (``OPENAI_BASE_URL``,
  ``ANTHROPIC_BASE_URL``, ``CO_API_URL``, ...; see ``batcher._providers._registry``), else the
  provider's public endpoint. A worker's own key for that provider (``OPENAI_API_KEY`` ...)
  is sent there and nowhere else.
* **allowed**: ``BATCHER_ALLOWED_API_BASES``, the operator's list. Trusted like the configured
  ones: a request naming an allowed base needs no key of its own (the worker's key for the
  request's provider is sent), and the base may be private or local (vLLM on localhost).
* **named**: any other ``api_base`` a caller names. It must come with the caller's own
  ``api_key`` (``MissingAPIKeyError`` at submission otherwise) and must be a *public*
  address: loopback, link-local (``169.254.169.254``, ``fe80::/10``), private (RFC 1918,
  ``fc00::/7``), shared (``100.64.0.0/10``), ``0.0.0.0/8``, multicast, reserved and
  documentation ranges, and IPv4 addresses embedded in IPv6 ones (``::ffff:10.0.0.1``,
  NAT64, 6to4) are refused, as are schemes other than http(s). A host name is checked on
  every address it resolves to, at submission and again when the worker connects: the
  worker's connection goes to the address it checked (no second lookup a DNS rebinding
  could answer differently), while TLS still verifies (and SNI names) the host name.

Matching a URL against a configured or allowed base (``BasePrefix.matches``): the scheme,
the host and the port must be equal (the port defaulting to 80/443; ``api.openai.com.evil.com``
and ``api.openai.com@evil.com`` are other hosts; host names are compared after IDNA encoding
and lowercasing, a trailing dot makes another name), and the URL's path must be the base's
path or continue it after a ``/`` (``/v1`` matches ``/v1`` and ``/v1/chat/completions``, not
``/v10``). Dot segments are resolved first (``/v1/../admin`` is ``/admin``), and the part after
the base's path must be plain: no percent escapes (``%2e%2e``), ``;`` or ``\\``, so no server
can read it as leaving the base. Query strings are ignored. A URL that does not match is not
trusted, which is always the safe direction.

``extra_headers`` are checked here too (``check_extra_headers``): no authentication headers,
no framing or routing headers, names that are HTTP tokens and values httpx and h11 can send.

The checks run at submission (``batcher._submit``), again in the worker before a key is chosen
(``workers._execute``), and a third time in the worker's HTTP client (``EgressTransport``):
a request to a URL that is not configured or allowed is connected through ``GuardedBackend``
and refused if it carries any of the worker's keys.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from batcher._exceptions import ConfigurationError, InvalidRequestError, MissingAPIKeyError

if TYPE_CHECKING:
    from batcher._config import Settings

__all__ = [
    "FORBIDDEN_HEADERS",
    "ApiBaseNotAllowedError",
    "BasePrefix",
    "EgressDeniedError",
    "EgressPolicy",
    "EgressTransport",
    "GuardedBackend",
    "address_problem",
    "check_extra_headers",
    "normalize_allowed_base",
    "parse_base",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses`` (strings); raises ``OSError`` when the name does not resolve."""

ALLOW_HINT = "only the operator can allow it, in BATCHER_ALLOWED_API_BASES"
EGRESS_EXTENSION = "batcher.egress"
"""Set to ``"named"`` on responses from a base that is neither configured nor allowed."""


class EgressDeniedError(InvalidRequestError):
    """A provider request the egress policy refuses (destination, or a worker key on its way out)."""

    def __init__(self, message: str, *, field: str | None = "api_base") -> None:
        super().__init__(message, field=field)


class ApiBaseNotAllowedError(InvalidRequestError):
    """The caller may not name an ``api_base`` at all (an HTTP key without the permission)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "this API key may not set api_base: ask for a key made with `batcher keys create --allow-api-base`, "
            "or leave api_base out to use the base the operator configured",
            field="api_base",
        )


# ---------------------------------------------------------------------------------------
# Base URLs
# ---------------------------------------------------------------------------------------

_HOSTNAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$")
_PLAIN_REST = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,=:@-]*)*$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_base(value: Any, *, field: str = "api_base") -> httpx.URL:
    """``value`` as an http(s) URL with a valid host and port; ``InvalidRequestError`` naming ``field``."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError("must be an http(s) URL such as https://api.openai.com/v1", field=field)
    text = value.strip()
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError, UnicodeError) as exc:
        raise InvalidRequestError(f"{_shown(text)} is not a valid URL ({exc})", field=field) from None
    if url.scheme not in _DEFAULT_PORTS:
        raise InvalidRequestError(f"{_shown(text)} is not an http(s) URL such as https://host/v1", field=field)
    if not url.host:
        raise InvalidRequestError(f"{_shown(text)} has no host", field=field)
    if _ip(url.host) is None and not _HOSTNAME.match(url.host):
        raise InvalidRequestError(f"{_shown(text)} does not name a valid host", field=field)
    if url.port is not None and not 0 < url.port < 65_536:
        raise InvalidRequestError(f"{_shown(text)} has an invalid port", field=field)
    return url


_MEMO_SIZE = 1_024


@functools.lru_cache(maxsize=256)
def _parsed_base(value: str) -> httpx.URL:
    """``parse_base``, cached (URLs are immutable; refusals are raised, never cached)."""
    return parse_base(value)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 200 else text[:199] + "…")


def _port(url: httpx.URL) -> int:
    return url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme, 0)


def _host(url: httpx.URL) -> str:
    """The host as compared: names as httpx gives them (IDNA, lowercase), addresses in their canonical form."""
    ip = _ip(url.host)
    return url.host if ip is None else str(ip)


def _raw_path(url: httpx.URL) -> str:
    return url.raw_path.split(b"?", 1)[0].decode("ascii", "replace") or "/"


def _ip(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class BasePrefix:
    """A configured or allowed base: scheme, host, port and path prefix (see the module docstring)."""

    scheme: str
    host: str
    port: int
    path: str
    """Without a trailing slash; ``""`` for the whole origin."""

    @classmethod
    def of(cls, base: str | httpx.URL) -> BasePrefix:
        url = base if isinstance(base, httpx.URL) else parse_base(base)
        return cls(url.scheme, _host(url), _port(url), _raw_path(url).rstrip("/"))

    def matches(self, url: httpx.URL) -> bool:
        if url.scheme != self.scheme or _host(url) != self.host or _port(url) != self.port:
            return False
        path = _raw_path(url)
        if path.rstrip("/") == self.path:
            return True
        if not path.startswith(self.path + "/"):
            return False
        rest = path[len(self.path) :]
        return bool(_PLAIN_REST.match(rest)) and not any(s in (".", "..") for s in rest.split("/"))

    def __str__(self) -> str:
        default = _DEFAULT_PORTS.get(self.scheme)
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"


def normalize_allowed_base(value: str) -> str:
    """An entry of ``BATCHER_ALLOWED_API_BASES``, normalised; ``ValueError`` saying what is wrong."""
    try:
        url = parse_base(value, field="BATCHER_ALLOWED_API_BASES")
    except InvalidRequestError as exc:
        raise ValueError(str(exc)) from None
    if url.userinfo:
        raise ValueError(f"BATCHER_ALLOWED_API_BASES: {value!r} must not hold credentials")
    if url.query or url.fragment:
        raise ValueError(f"BATCHER_ALLOWED_API_BASES: {value!r} must not have a query or fragment")
    return str(BasePrefix.of(url))


# ---------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_problem(address: Address | str) -> str | None:
    """Why a tenant-named base may not be at ``address`` (``"loopback"``, ...); None if it is public."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "link-local"
        if ip.ipv4_mapped is not None:
            return address_problem(ip.ipv4_mapped)
        if ip in _NAT64:
            return address_problem(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and (embedded := address_problem(ip.sixtofour)):
            return embedded
        if ip.teredo is not None:
            return "Teredo"
        if ip.is_site_local:
            return "site-local"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared (CGNAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (in the resolver's order, without repeats)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _refusal(what: str, problem: str) -> EgressDeniedError:
    return EgressDeniedError(f"{what} is a {problem} address; {ALLOW_HINT}")


def check_destination(url: httpx.URL, resolve: Resolver | None = system_resolve) -> None:
    """Refuse a named base whose host is, or resolves to, a non-public address.

    A name that does not resolve here passes: the worker checks again when it connects. With
    ``resolve=None`` only a literal address is checked (the worker, which checks names at connect time).
    """
    literal = _ip(url.host)
    if literal is not None:
        if problem := address_problem(literal):
            raise _refusal(url.host, problem)
        return
    if resolve is None:
        return
    try:
        addresses = resolve(url.host, _port(url))
    except (OSError, UnicodeError):
        return
    for address in addresses:
        if problem := address_problem(address):
            raise _refusal(f"{url.host} resolves to an address that", problem)


# ---------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EgressPolicy:
    """The configured bases (per provider), the allowed ones, and the worker keys to keep home."""

    configured: Mapping[str, BasePrefix]
    allowed: tuple[BasePrefix, ...] = ()
    worker_keys: tuple[str, ...] = field(default=(), repr=False)
    _verdicts: dict[tuple[Any, ...], bool] = field(default_factory=dict, repr=False, compare=False)
    """Memo of ``is_trusted`` (a worker asks about the same few URLs for every request: ~20 µs each otherwise)."""

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> EgressPolicy:
        """From ``BATCHER_ALLOWED_API_BASES`` and the provider variables of ``environ`` (default: this process)."""
        from batcher._providers import PROVIDERS, resolve_api_base

        env = os.environ if environ is None else environ
        configured: dict[str, BasePrefix] = {}
        for name in PROVIDERS:
            try:
                configured[name] = BasePrefix.of(resolve_api_base(name, None, env))
            except (ConfigurationError, InvalidRequestError):
                continue  # a malformed variable trusts nothing; calls to that provider fail where it is read
        keys = {env.get(var, "").strip() for a in PROVIDERS.values() for var in a.api_key_env_vars}
        return cls(
            configured=configured,
            allowed=tuple(BasePrefix.of(b) for b in settings.allowed_api_bases),
            worker_keys=tuple(sorted(k for k in keys if k)),
        )

    def is_allowed(self, url: httpx.URL) -> bool:
        return any(p.matches(url) for p in self.allowed)

    def is_trusted(self, url: httpx.URL, provider: str | None = None) -> bool:
        """Configured (for ``provider``; for any provider when None) or allowed: keys may go there."""
        memo = (provider, url.scheme, url.host, url.port, url.raw_path)
        verdict = self._verdicts.get(memo)
        if verdict is None:
            verdict = self._is_trusted(url, provider)
            if len(self._verdicts) >= _MEMO_SIZE:
                self._verdicts.clear()
            self._verdicts[memo] = verdict
        return verdict

    def _is_trusted(self, url: httpx.URL, provider: str | None) -> bool:
        if provider is not None:
            base = self.configured.get(provider)
            if base is not None and base.matches(url):
                return True
        elif any(p.matches(url) for p in self.configured.values()):
            return True
        return self.is_allowed(url)

    def key_may_go(self, provider: str, base: str | httpx.URL) -> bool:
        """Whether this process's own key for ``provider`` may be sent to ``base``."""
        return self.is_trusted(base if isinstance(base, httpx.URL) else _parsed_base(base), provider)

    def check_named_base(
        self,
        provider: str,
        base: str | httpx.URL,
        *,
        own_key: bool,
        resolve: Resolver | None = system_resolve,
    ) -> httpx.URL:
        """A base named with a request (submission, and again in the worker): parsed; with the caller's own
        key unless configured for ``provider`` or allowed; public unless configured or allowed."""
        url = base if isinstance(base, httpx.URL) else parse_base(base)
        if self.is_trusted(url, provider):
            return url
        if not own_key:
            raise MissingAPIKeyError(
                f"api_base {str(BasePrefix.of(url))!r} is not a base the operator configured for {provider}, and "
                "the workers' own keys are sent only there: pass your own api_key= with it (or the operator "
                "can add it to BATCHER_ALLOWED_API_BASES)",
                field="api_key",
            )
        if not self.is_trusted(url):
            check_destination(url, resolve)
        return url

    def carries_worker_key(self, request: httpx.Request) -> bool:
        """Whether any of this process's provider keys is in the request's headers or URL."""
        if not self.worker_keys:
            return False
        texts = [v for _, v in request.headers.items()]
        texts.append(str(request.url))
        return any(key in text for key in self.worker_keys for text in texts)


# ---------------------------------------------------------------------------------------
# extra_headers
# ---------------------------------------------------------------------------------------

AUTH_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "x-goog-api-key",
        "ocp-apim-subscription-key",
    }
)
FRAMING_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "content-encoding",
        "content-type",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "forwarded",
        "via",
        "x-real-ip",
        "x-http-method-override",
        "x-original-url",
        "x-rewrite-url",
    }
)
FORBIDDEN_HEADERS = AUTH_HEADERS | FRAMING_HEADERS
FORBIDDEN_HEADER_PREFIXES = ("x-forwarded-", "proxy-")
HEADER_NAME_PATTERN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
HEADER_VALUE_PATTERN = re.compile(r"^([\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?)?$")
MAX_EXTRA_HEADERS = 64
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 8_192


def check_extra_headers(value: Any) -> dict[str, str]:
    """``extra_headers`` as ``{name: value}`` strings that can be sent and change nothing that is batcher's
    to set; ``InvalidRequestError`` naming ``extra_headers.<name>`` otherwise."""
    if not isinstance(value, Mapping):
        raise InvalidRequestError("must be an object of header names to values", field="extra_headers")
    if len(value) > MAX_EXTRA_HEADERS:
        raise InvalidRequestError(f"has more than {MAX_EXTRA_HEADERS} headers", field="extra_headers")
    checked: dict[str, str] = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not HEADER_NAME_PATTERN.fullmatch(name) or len(name) > MAX_HEADER_NAME:
            shown = name[:40] if isinstance(name, str) else name
            raise InvalidRequestError(
                f"{shown!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)",
                field="extra_headers",
            )
        here = f"extra_headers.{name}"
        lowered = name.lower()
        if lowered in AUTH_HEADERS:
            raise InvalidRequestError(
                "authentication headers cannot be set: pass your key as api_key= (it travels encrypted)", field=here
            )
        if lowered in FRAMING_HEADERS or lowered.startswith(FORBIDDEN_HEADER_PREFIXES):
            raise InvalidRequestError("is set by batcher and the HTTP client; it cannot be overridden", field=here)
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise InvalidRequestError("must be a string", field=here)
        text = str(raw)
        if len(text) > MAX_HEADER_VALUE:
            raise InvalidRequestError(f"is longer than {MAX_HEADER_VALUE:,} characters", field=here)
        if not HEADER_VALUE_PATTERN.fullmatch(text):
            raise InvalidRequestError(
                "must be printable ASCII without leading or trailing spaces (no line breaks, NUL or other "
                "control characters)",
                field=here,
            )
        checked[name] = text
    return checked


# ---------------------------------------------------------------------------------------
# The worker's HTTP client: connect-time checks
# ---------------------------------------------------------------------------------------


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's network backend for named bases: resolve once, check every address, connect to a
    checked address (never to the name, which a second lookup could answer differently)."""

    def __init__(
        self,
        resolve: Resolver = system_resolve,
        inner: httpcore.NetworkBackend | None = None,
        *,
        check: Callable[[str], str | None] = address_problem,
    ) -> None:
        self._resolve = resolve
        self._inner = inner or httpcore.SyncBackend()
        self._check = check

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = list(self._resolve(host, port))
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"{host} does not resolve ({type(exc).__name__})") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host} does not resolve")
        for address in addresses:
            if problem := self._check(address):
                raise _refusal(host, problem) if _ip(host) else _refusal(f"{host} resolves to an address that", problem)
        error: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise EgressDeniedError("unix sockets are not reachable through api_base")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedHTTPTransport(httpx.HTTPTransport):
    """httpx's own transport (request and exception mapping), its pool connecting through ``GuardedBackend``."""

    def __init__(self, *, verify: ssl.SSLContext, limits: httpx.Limits, backend: httpcore.NetworkBackend) -> None:
        super().__init__(verify=verify, limits=limits, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


class EgressTransport(httpx.BaseTransport):
    """The worker's transport: configured and allowed bases go out as before (through the environment's
    ``HTTP(S)_PROXY`` if set); any other URL is refused if it carries a worker key, and is connected
    directly through ``GuardedBackend`` (a proxy would resolve the name beyond the check's reach)."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        verify: ssl.SSLContext,
        limits: httpx.Limits,
        backend: httpcore.NetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self._verify = verify
        self._limits = limits
        self._direct = httpx.HTTPTransport(verify=verify, limits=limits)
        self._proxied: dict[str, httpx.HTTPTransport] = {}
        self._routes: dict[tuple[str, str], httpx.BaseTransport] = {}
        """Trusted (scheme, host) -> its transport: reading the proxy variables costs ~40 µs a request."""
        self._lock = threading.Lock()
        self._guarded = _GuardedHTTPTransport(verify=verify, limits=limits, backend=backend or GuardedBackend())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.policy.is_trusted(request.url):
            return self._trusted(request.url).handle_request(request)
        if self.policy.carries_worker_key(request):
            raise EgressDeniedError(
                f"refused to send a worker's provider key to {request.url.scheme}://{request.url.netloc.decode()}, "
                "which is not a base the operator configured or allowed"
            )
        response = self._guarded.handle_request(request)
        response.extensions[EGRESS_EXTENSION] = "named"
        return response

    def _trusted(self, url: httpx.URL) -> httpx.BaseTransport:
        route = self._routes.get((url.scheme, url.host))
        if route is not None:
            return route
        proxy = _environment_proxy(url)
        with self._lock:
            if proxy is None:
                route = self._direct
            else:
                route = self._proxied.get(proxy)
                if route is None:
                    route = httpx.HTTPTransport(verify=self._verify, limits=self._limits, proxy=proxy)
                    self._proxied[proxy] = route
            self._routes[(url.scheme, url.host)] = route
        return route

    def close(self) -> None:
        self._direct.close()
        self._guarded.close()
        with self._lock:
            proxied, self._proxied, self._routes = list(self._proxied.values()), {}, {}
        for transport in proxied:
            transport.close()


def _environment_proxy(url: httpx.URL) -> str | None:
    """The proxy ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` name for ``url``, unless ``NO_PROXY``
    exempts its host (what an ``httpx.Client`` with ``trust_env`` would use)."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(url.host):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"
