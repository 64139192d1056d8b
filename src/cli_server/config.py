"""Typed server configuration, and parsers shared by the command line and the environment."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen

from cli_server.plumbing.networks import Network

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_HOST = re.compile(
    r"^(?=.{1,253}(?::|$))[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
    r"(?::(\d{1,5}))?$"
)


def parse_duration(text: str) -> float:
    """Parse ``"30m"``, ``"1h30m"``, ``"45s"``, ``"7d"`` or plain seconds into seconds.

    The unit letters follow Go's ``time.ParseDuration`` (plus ``d``) because the original
    product's ``IDLE_TIMEOUT`` used that syntax.
    """
    value = text.strip().lower()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value):
            raise ValueError(f"{text!r} is not a duration such as 45s, 30m, 1h30m or 7d") from None
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def parse_base_domain(text: str) -> str:
    """Validate ``host[:port]`` used to build sandbox subdomains; returns it lower-cased."""
    value = text.strip().lower().rstrip(".")
    match = _HOST.match(value)
    if match is None or (match.group(1) is not None and not 0 < int(match.group(1)) < 65536):
        raise ValueError(
            f"{text!r} is not a host name with an optional port, e.g. example.com:8080"
        )
    return value


def parse_base_scheme(text: str) -> str:
    value = text.strip().lower()
    if value not in ("http", "https"):
        raise ValueError(f"{text!r} must be http or https")
    return value


def parse_db_url(text: str) -> str:
    """Accept a libpq URI (``postgres://...``) or key=value DSN that libpq can read."""
    from psycopg2.extensions import parse_dsn

    value = text.strip()
    try:
        parse_dsn(value)
        if "://" in value:
            urlsplit(value).port  # noqa: B018 -- raises ValueError for a port that is no number
    except Exception as e:
        raise ValueError(f"not a PostgreSQL connection string ({str(e).strip()})") from None
    return value


def default_data_dir() -> Path:
    """Root daemons keep state in /var/lib; users in their XDG data dir."""
    if os.geteuid() == 0:
        return Path("/var/lib/cli-server")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "cli-server"


def parse_backend(text: str) -> str:
    value = text.strip().lower()
    if value in ("process", "docker", "k8s"):
        return value
    raise ValueError(f"{text!r} is not a backend (process, docker, k8s)")


def parse_access_mode(text: str) -> str:
    value = text.strip()
    modes = ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod")
    if value not in modes:
        raise ValueError(f"{text!r} is not an access mode ({', '.join(modes)})")
    return value


def parse_resources(text: str) -> dict[str, Any]:
    """A pod's ResourceRequirements as JSON: ``{"limits": {"memory": "1Gi", "cpu": "1"}}``."""
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f'{text!r} is not JSON such as {{"limits": {{"cpu": "1"}}}}') from None
    if not isinstance(value, dict) or set(value) - {"limits", "requests"}:
        raise ValueError("give an object with limits and/or requests")
    for part in value.values():
        if not isinstance(part, dict) or not all(
            isinstance(v, str | int | float) for v in part.values()
        ):
            raise ValueError("limits and requests map resource names to quantities")
    return {k: {n: str(q) for n, q in v.items()} for k, v in value.items()}


def parse_docker_firewall(text: str) -> bool:
    """``auto``: write the docker sandboxes' egress rules when we can; ``off``: never."""
    value = text.strip().lower()
    if value in ("auto", "off"):
        return value == "auto"
    raise ValueError(f"{text!r} is neither auto nor off")


def parse_retention_days(text: str) -> int:
    """``--audit-retention-days``: whole days the audit log keeps; 0 keeps it for ever."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of days") from None
    if not 0 <= value <= 36500:
        raise ValueError(f"{text!r} must be from 0 (keep for ever) to 36500 days")
    return value


def parse_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"{text!r} must be at least 1")
    return value


def parse_workers(text: str) -> int:
    """``--proxy-workers``: how many relay workers (0: none, twisted.web carries everything)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of workers") from None
    if not 0 <= value <= 256:
        raise ValueError(f"{text!r} must be from 0 (no workers) to 256")
    return value


def parse_size(text: str) -> int:
    """``512m``, ``2g``, ``1.5G`` or plain bytes."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in "kmgt" and value else value
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise ValueError(f"{text!r} is not a size such as 512m or 2g") from None
    if size < 64 * 1024**2:
        raise ValueError(f"{text!r} is below the 64 MiB opencode needs at the very least")
    return size


def parse_quota(text: str) -> int:
    """A disk quota: a size such as ``10g``, or ``off`` (0) for none."""
    if text.strip().lower() in ("off", "0"):
        return 0
    return parse_size(text)


def parse_cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of CPUs such as 2 or 0.5") from None
    if not 0.01 <= value <= 1024:
        raise ValueError(f"{text!r} must be between 0.01 and 1024")
    return value


def parse_direct_members(text: str) -> tuple[str, ...]:
    """Comma-separated email domains whose users may be added to a workspace without an
    invitation by someone of the same domain; ``*`` lets anyone add anyone; empty: nobody."""
    domains: list[str] = []
    for part in text.split(","):
        domain = part.strip().lower().removeprefix("@").rstrip(".")
        if not domain:
            continue
        if domain != "*" and (":" in domain or _HOST.match(domain) is None):
            raise ValueError(
                f"{part.strip()!r} is not an email domain such as example.com (or * for anyone)"
            )
        domains.append(domain)
    return tuple(domains)


def parse_registration(text: str) -> str:
    """Who may create an account: ``open`` (anyone), ``invite`` (with a sign-up link from the
    instance admin) or ``closed`` (nobody; the admin resets passwords and enables accounts)."""
    value = text.strip().lower()
    if value not in ("open", "invite", "closed"):
        raise ValueError(f"{text!r} is not a registration mode (open, invite or closed)")
    return value


def parse_base_url(text: str) -> str:
    """An http(s) URL without query or fragment, its trailing ``/`` removed: the issuer of an
    OpenID provider, or where the browser reaches this server (``OIDC_REDIRECT_BASE_URL``)."""
    value = text.strip().rstrip("/")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port that is no number
    except ValueError:
        raise ValueError(f"{text!r} is not a URL such as https://example.com") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL such as https://example.com")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{text!r} must have no query, fragment or credentials")
    return value


def parse_advertise_url(text: str) -> str:
    """An http(s) base URL; a bare IPv6 host (the chart's ``http://$(POD_IP):8080`` on an
    IPv6 cluster) gets its brackets."""
    import ipaddress

    value = text.strip()
    scheme, sep, rest = value.partition("://")
    netloc, slash, path = rest.partition("/")
    host, colon, port = netloc.rpartition(":")
    if sep and colon and "[" not in netloc and host.count(":") >= 2:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            pass
        else:
            value = f"{scheme}://[{host}]:{port}{slash}{path}"
    return parse_base_url(value)


def default_advertise_url(listen: tuple[str, ...] | list[str]) -> str | None:
    """``http://<hostname>:<port>`` of the first TCP listener; None with no TCP listener."""
    import socket

    for description in listen:
        parts = description.split(":")
        if parts[0] in ("tcp", "tcp6") and len(parts) > 1 and parts[1].isdigit():
            return f"http://{socket.gethostname()}:{parts[1]}"
        if parts[0].isdigit():  # (a bare port is a TCP one)
            return f"http://{socket.gethostname()}:{parts[0]}"
    return None


def parse_on_off(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"{text!r} is neither on nor off")
    return value == "on"


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(text.replace(",", " ").split()))
    if "openid" not in scopes:
        raise ValueError(f"{text!r} lacks the openid scope (e.g. openid email profile)")
    return scopes


def parse_email_domains(text: str) -> tuple[str, ...]:
    """Comma-separated email domains (``example.com``); empty: any."""
    domains = parse_direct_members(text)
    if "*" in domains:
        raise ValueError("list email domains such as example.com; leave it empty for any")
    return domains


def read_secret(environ: Mapping[str, str], name: str) -> str | None:
    """A secret from ``NAME``, or from the file ``NAME_FILE`` names (a mounted Kubernetes
    Secret); not both. The file's trailing newline is not part of the secret."""
    path = environ.get(f"{name}_FILE")
    if not path:
        return environ.get(name) or None
    if environ.get(name):
        raise ValueError(f"{name} and {name}_FILE are both set; keep one")
    try:
        value = Path(path).read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ValueError(f"{name}_FILE: cannot read {path} ({why})") from None
    if not value:
        raise ValueError(f"{name}_FILE: {path} is empty")
    return value


@frozen
class GithubLogin:
    """Sign-in with GitHub (an OAuth app). The URLs are GitHub's; tests point them elsewhere."""

    client_id: str
    client_secret: str = field(repr=False)
    web_url: str = "https://github.com"  # authorize and token endpoints
    api_url: str = "https://api.github.com"


@frozen
class OidcLogin:
    """Sign-in with an OpenID Connect provider found by discovery from its issuer URL."""

    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    name: str = "Single sign-on"  # the sign-in button's label
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    groups_claim: str | None = None


def parse_access_log(text: str) -> str:
    """Which requests the access log lists: ``all``, ``changes`` (all but the successful API
    reads an open dashboard makes every few seconds) or ``off``."""
    value = text.strip().lower()
    if value not in ("all", "changes", "off"):
        raise ValueError(f"{text!r} is not an access-log mode (all, changes or off)")
    return value


def default_max_sandboxes() -> int:
    """About 0.5 GiB per opencode, leaving a quarter of the memory to everything else."""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return 8
    return max(1, int(kib * 0.75 / (512 * 1024)))


@frozen
class ServerConfig:
    """Everything `twistd cli-server` was told, parsed and checked."""

    listen: tuple[str, ...]
    data_dir: Path
    db_url: str | None
    base_domain: str
    base_scheme: str
    session_lifetime: float
    backend: str = "process"
    opencode_bin: str | None = None
    max_sandboxes: int = 8
    max_sandboxes_per_workspace: int = 10
    max_sandboxes_per_user: int = 5
    max_sandboxes_stored_per_workspace: int = 20
    max_workspaces_per_user: int = 10
    direct_members: tuple[str, ...] = ()
    idle_timeout: float = 1800.0
    allow_unisolated: bool = False
    anthropic_proxy_url: str | None = None
    anthropic_base_url: str = "https://api.anthropic.com"
    sandbox_memory: int = 2 * 1024**3
    sandbox_pids: int = 1024
    sandbox_cpus: float = 2.0
    workspace_disk_size: int = 10 * 1024**3  # process backend; 0 = no quota
    sandbox_home_size: int = 2 * 1024**3
    docker_url: str | None = None
    docker_network: str | None = None
    docker_firewall: bool = True
    agent_image: str | None = None
    egress_allow: tuple[Network, ...] = ()  # private ranges sandboxes may reach anyway
    # peers whose X-Forwarded-For / Forwarded name the client (client_address.py)
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    registration: str = "open"  # open, invite or closed (parse_registration)
    # Single sign-on: the providers configured, where they send the browser back to (None:
    # ``origin``), whose email domains may sign in (empty: any), and whether passwords still may.
    github: GithubLogin | None = None
    oidc: OidcLogin | None = None
    sso_redirect_base_url: str | None = None
    sso_allowed_domains: tuple[str, ...] = ()
    password_login: bool = True
    access_log: str = "changes"  # all, changes or off (parse_access_log)
    audit_retention_days: int = 365  # 0: the audit log is never purged
    proxy_workers: int = 1  # relay worker processes (parse_workers); tap's default: the CPUs
    drain_timeout: float = 30.0  # on SIGTERM: how long in-flight requests may take to finish
    # --backend k8s (k8s_backend.py): where the cluster is and what sandbox pods get
    kubeconfig: str | None = None  # None: in-cluster, else KUBECONFIG / ~/.kube/config
    sandbox_namespace: str | None = None  # None: the server pod's namespace
    runtime_class: str | None = None
    storage_class: str | None = None
    workspace_access_mode: str = "ReadWriteOnce"
    # None: limits from memory and cpus (a dict: left out of the config's hash)
    sandbox_resources: dict[str, Any] | None = field(default=None, hash=False)
    k8s_instance: str | None = None  # None: this data directory's instance id
    in_cluster_url: str = "http://cli-server:8080"  # the server's Service, as pods reach it
    advertise_url: str | None = None  # where the other replicas reach this one (None: nowhere)
    # Secrets: only from the environment (a command line is visible to every local user).
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_auth_token: str | None = field(default=None, repr=False)
    internal_secret: str | None = field(default=None, repr=False)  # INTERNAL_SECRET

    @property
    def origin(self) -> str:
        """The main site's own origin, as a browser sends it in ``Origin``."""
        return f"{self.base_scheme}://{self.base_domain}"

    @property
    def secure_cookies(self) -> bool:
        return self.base_scheme == "https"

    def warnings(self) -> list[str]:
        """What an operator should hear at start: settings that work, but protect less."""
        said = []
        host = self.base_domain.rsplit(":", 1)[0]
        if self.base_scheme == "http" and host != "localhost" and not host.endswith(".localhost"):
            # Browsers keep *.localhost apart; under any other name, a page on a sandbox
            # subdomain can set a cookie for the whole base domain over plain http.
            said.append(
                f"BASE_SCHEME is http for {self.base_domain}: a page in any sandbox can sign "
                "browsers into another account of this server (a cookie set for the parent "
                "domain). Use https (--base-scheme https behind TLS) for more than one user."
            )
        if self.backend == "process" and self.anthropic_proxy_url:
            said.append(
                "ANTHROPIC_PROXY_URL is set with the process backend: a sandbox's token is "
                "accepted only through its own door, so calls through that URL are refused; "
                "unset it to give sandboxes their doors"
            )
        if self.sso_redirect_base_url and self.sso_redirect_base_url != self.origin:
            # The callback sets the session cookie on the host it is served from.
            said.append(
                f"OIDC_REDIRECT_BASE_URL is {self.sso_redirect_base_url}, not this server's "
                f"own {self.origin}: single sign-on signs browsers in there, so it must reach "
                "this server under the name users open"
            )
        if not (self.anthropic_api_key or self.anthropic_auth_token):
            said.append(
                "Claude is not set up: neither ANTHROPIC_API_KEY nor ANTHROPIC_AUTH_TOKEN is "
                "set, so opencode's prompts in sandboxes fail (the dashboard says so). Set one "
                "in this server's environment and restart it."
            )
        return said
