"""Which webhook URLs the service calls: no server-side request forgery.

A URL must be ``http`` or ``https`` with a host and no user name or password. Its host is
resolved, and every address it resolves to must be public: loopback, private, link-local,
shared (carrier-grade NAT), multicast, reserved and unspecified addresses are refused, unless
the host's name, the address or a network holding it is listed in ``DDPM_WEBHOOK_ALLOWED_HOSTS``;
cloud-metadata addresses are refused whatever is listed. The check runs when a job is submitted
(a 422 names the reason) and again at every attempt, inside the connection itself
(:class:`GuardedBackend`): the name is resolved once, checked, and the connection goes to that
checked address, so a name that resolves elsewhere by then (DNS rebinding) is refused, never
contacted. TLS still verifies the certificate against the URL's host name.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# instance metadata services (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS over IPv6; ECS task
# metadata; Alibaba; Azure's wire server): refused even when listed
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(text)
    for text in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "168.63.129.16")
)
RESOLVE_TIMEOUT_S = 3.0


class URLRefused(ValueError):
    """A webhook URL the service will not call; the message says why."""


async def getaddrinfo(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the system's resolver)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def _kind(address: IPAddress) -> str | None:
    """Why ``address`` is not public (None when it is)."""
    for kind in ("loopback", "private", "link_local", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-public"


class AddressPolicy:
    """The rules above, with the allowed hosts of ``DDPM_WEBHOOK_ALLOWED_HOSTS``."""

    def __init__(self, allowed: Iterable[str] = (), resolve_timeout_s: float = RESOLVE_TIMEOUT_S) -> None:
        self.names: set[str] = set()
        self.networks: list[IPNetwork] = []
        for entry in allowed:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.names.add(entry.lower().rstrip("."))
        self.resolve_timeout_s = resolve_timeout_s

    @staticmethod
    def parse(url: str) -> httpx.URL:
        """``url`` parsed as the sender will read it; raises :class:`URLRefused`."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as error:
            raise URLRefused(f"not a URL: {error}") from None
        if parsed.scheme not in ("http", "https"):
            raise URLRefused(f"only http and https URLs are called, not {parsed.scheme or 'a relative'!r} URLs")
        if not parsed.host:
            raise URLRefused("the URL has no host")
        if parsed.userinfo:
            raise URLRefused("the URL carries a user name or password; put a token in its path or query instead")
        return parsed

    def check_address(self, host: str, address: IPAddress) -> None:
        """Raise :class:`URLRefused` unless ``host`` may be reached at ``address``."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        where = f"{host} is" if host.strip("[]") == str(address) else f"{host} resolves to {address},"
        if address in METADATA_ADDRESSES:
            raise URLRefused(f"{where} a cloud-metadata address")
        if host.lower().rstrip(".") in self.names or any(address in network for network in self.networks):
            return
        kind = _kind(address)
        if kind is not None:
            raise URLRefused(f"{where} a {kind} address (list it in DDPM_WEBHOOK_ALLOWED_HOSTS to allow it)")

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses ``host`` resolves to, each checked; raises :class:`URLRefused`."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            found = [literal]
        else:
            try:
                texts = await asyncio.wait_for(getaddrinfo(host, port), timeout=self.resolve_timeout_s)
            except (OSError, asyncio.TimeoutError) as error:
                raise URLRefused(f"{host} does not resolve: {error or 'timed out'}") from None
            found = [ipaddress.ip_address(text.split("%")[0]) for text in texts]
        if not found:
            raise URLRefused(f"{host} resolves to no address")
        for address in found:  # one refused address refuses the host: no mixed answers
            self.check_address(host, address)
        return found

    async def check_url(self, url: str) -> httpx.URL:
        """``url`` parsed, its host resolved and checked; raises :class:`URLRefused`."""
        parsed = self.parse(url)
        await self.addresses(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))
        return parsed


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend that connects only to addresses the policy allows: the host is
    resolved and checked here, and the connection goes to the checked address."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = (await self.policy.addresses(host, port))[0]
        return await self._inner.connect_tcp(
            str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):  # noqa: ANN001
        raise URLRefused("unix sockets are never called")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """The TLS context of webhook deliveries (certificates verified; made once: loading the CA
    bundle takes tens of milliseconds)."""
    return httpx.create_ssl_context(trust_env=False)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a :class:`GuardedBackend`: no proxy from the environment, no retries."""

    def __init__(self, policy: AddressPolicy) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False, retries=0)
        # the pool httpx builds, rebuilt with the guarded backend (httpx takes no backend itself)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=32,
            max_keepalive_connections=8,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(policy),
        )
