"""`twistd cli-server`: command-line options and the service tree."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.application.service import IService
from twisted.python import usage

from cli_server.config import (
    GithubLogin,
    OidcLogin,
    ServerConfig,
    default_advertise_url,
    default_data_dir,
    default_max_sandboxes,
    parse_access_log,
    parse_access_mode,
    parse_advertise_url,
    parse_backend,
    parse_base_domain,
    parse_base_scheme,
    parse_base_url,
    parse_cpus,
    parse_db_url,
    parse_direct_members,
    parse_docker_firewall,
    parse_duration,
    parse_email_domains,
    parse_on_off,
    parse_positive_int,
    parse_quota,
    parse_registration,
    parse_resources,
    parse_retention_days,
    parse_scopes,
    parse_size,
    parse_workers,
    read_secret,
)
from cli_server.plumbing.client_address import parse_trusted_proxies
from cli_server.sandboxes.egress import parse_allow


@frozen
class Setting:
    """One option: its environment variable, parser, default and help."""

    env: str | None
    parse: Callable[[str], Any]
    default: str | None
    help: str
    default_help: str | None = None

    def help_text(self) -> str:
        shown = self.default_help or self.default
        notes = [f"env {self.env}"] if self.env else []
        notes += [f"default {shown}"] if shown else []
        return f"{self.help} [{'; '.join(notes)}]" if notes else self.help


# The command line wins over the environment, which wins over the default.
SETTINGS: dict[str, Setting] = {
    "data-dir": Setting(
        "CLI_SERVER_DATA",
        lambda v: Path(v).expanduser().absolute(),
        None,
        "State directory.",
        "/var/lib/cli-server as root, else per user",
    ),
    "db-url": Setting(
        "DATABASE_URL",
        parse_db_url,
        None,
        "PostgreSQL URL.",
        "an embedded PostgreSQL under --data-dir",
    ),
    "base-domain": Setting(
        "BASE_DOMAIN",
        parse_base_domain,
        "localhost:8080",
        "Public host[:port]; sandboxes live at oc-ID.<this>.",
    ),
    "base-scheme": Setting("BASE_SCHEME", parse_base_scheme, "http", "http or https."),
    "session-lifetime": Setting(
        "SESSION_LIFETIME", parse_duration, "7d", "How long a login lasts, e.g. 12h."
    ),
    "backend": Setting("BACKEND", parse_backend, "process", "Where sandboxes run."),
    "opencode-bin": Setting(
        "OPENCODE_BIN", str, None, "The opencode binary.", "opencode on PATH, else ./node_modules"
    ),
    "max-sandboxes": Setting(
        "MAX_SANDBOXES",
        parse_positive_int,
        None,
        "Most sandboxes running at once.",
        "0.5 GiB each within 3/4 of the memory",
    ),
    "proxy-workers": Setting(
        "PROXY_WORKERS",
        parse_workers,
        None,
        "Relay worker processes carrying sandbox connections (0: none, the server carries"
        " every request itself).",
        "the number of CPUs",
    ),
    "max-sandboxes-per-workspace": Setting(
        "MAX_SANDBOXES_PER_WORKSPACE",
        parse_positive_int,
        "10",
        "Most sandboxes running at once in one workspace.",
    ),
    "max-sandboxes-per-user": Setting(
        "MAX_SANDBOXES_PER_USER",
        parse_positive_int,
        "5",
        "Most sandboxes running at once that one person started or resumed.",
    ),
    "max-sandboxes-stored-per-workspace": Setting(
        "MAX_SANDBOXES_STORED_PER_WORKSPACE",
        parse_positive_int,
        "20",
        "Most sandboxes that exist in one workspace, paused ones too (each keeps a disk).",
    ),
    "max-workspaces-per-user": Setting(
        "MAX_WORKSPACES_PER_USER",
        parse_positive_int,
        "10",
        "Most workspaces one person may own or have created.",
    ),
    "direct-members": Setting(
        "DIRECT_MEMBERS",
        parse_direct_members,
        None,
        "Email domains (comma-separated) whose users a colleague of the same domain adds to a"
        " workspace directly, without an invitation; * for everyone. Only where users cannot"
        " pick an address they do not own (verified sign-in, closed registration).",
        "none: every new member is invited and must accept",
    ),
    "sandbox-memory": Setting(
        "SANDBOX_MEMORY", parse_size, "2g", "Memory limit of each sandbox, e.g. 1g, 512m."
    ),
    "sandbox-pids": Setting(
        "SANDBOX_PIDS", parse_positive_int, "1024", "Most processes in each sandbox."
    ),
    "sandbox-cpus": Setting(
        "SANDBOX_CPUS",
        parse_cpus,
        "2",
        "CPUs each docker sandbox may use (process backend: not limited).",
    ),
    "workspace-disk-size": Setting(
        "WORKSPACE_DISK_SIZE",
        parse_quota,
        "10g",
        "Disk quota of each workspace's shared disk, or off.",
    ),
    "sandbox-home-size": Setting(
        "SANDBOX_HOME_SIZE",
        parse_quota,
        "2g",
        "Disk quota of each sandbox's HOME, or off.",
    ),
    "idle-timeout": Setting(
        "IDLE_TIMEOUT", parse_duration, "30m", "Pause a sandbox after this long without activity."
    ),
    "drain-timeout": Setting(
        "DRAIN_TIMEOUT",
        parse_duration,
        "30s",
        "On SIGTERM, how long in-flight requests may take to finish before the replica stops.",
    ),
    "docker-url": Setting(
        "DOCKER_HOST",
        str,
        None,
        "Docker engine for --backend docker.",
        "the SDK's default (DOCKER_HOST, /var/run/docker.sock)",
    ),
    "docker-network": Setting(
        "DOCKER_NETWORK",
        str,
        None,
        "Join sandboxes to this network instead of publishing ports (for a server in a container).",
    ),
    "docker-firewall": Setting(
        "DOCKER_FIREWALL",
        parse_docker_firewall,
        "auto",
        "auto: as root on the engine's host, write the host firewall rules that keep docker "
        "sandboxes off the host and private networks; off: log them for the operator.",
    ),
    "agent-image": Setting(
        "AGENT_IMAGE", str, None, "Sandbox image for --backend docker or k8s (required there)."
    ),
    "anthropic-base-url": Setting(
        "ANTHROPIC_BASE_URL",
        str,
        "https://api.anthropic.com",
        "The Anthropic API the proxy forwards to.",
    ),
    "egress-allow": Setting(
        "EGRESS_ALLOW",
        parse_allow,
        None,
        "CIDRs sandboxes may reach although on this host or private, comma-separated.",
        "none: the internet only",
    ),
    "trusted-proxies": Setting(
        "TRUSTED_PROXIES",
        parse_trusted_proxies,
        None,
        "Comma-separated addresses/CIDRs of reverse proxies whose X-Forwarded-For (or "
        "Forwarded) names the client; from anyone else those headers are ignored.",
        "none",
    ),
    "anthropic-proxy-url": Setting(
        "ANTHROPIC_PROXY_URL", str, None, "URL sandboxes use for the server's Anthropic proxy."
    ),
    "advertise-url": Setting(
        "ADVERTISE_URL",
        parse_advertise_url,
        None,
        "Where the other replicas of this server reach this one (several replicas on one"
        " database).",
        "http://<hostname>:<port of the first TCP --listen>",
    ),
    "registration": Setting(
        "REGISTRATION",
        parse_registration,
        "open",
        "Who may create an account: open (anyone), invite (with a one-time sign-up link from"
        " the instance admin) or closed (nobody). The first account, the admin, always may.",
    ),
    # Single sign-on. Client secrets come only from the environment: GITHUB_CLIENT_SECRET,
    # OIDC_CLIENT_SECRET, or the files GITHUB_CLIENT_SECRET_FILE, OIDC_CLIENT_SECRET_FILE name.
    "oidc-redirect-base-url": Setting(
        "OIDC_REDIRECT_BASE_URL",
        parse_base_url,
        None,
        "Where browsers reach this server, for the providers' callback URLs.",
        "BASE_SCHEME://BASE_DOMAIN",
    ),
    "github-client-id": Setting(
        "GITHUB_CLIENT_ID", str.strip, None, "GitHub OAuth app's client id (sign in with GitHub)."
    ),
    "oidc-issuer-url": Setting(
        "OIDC_ISSUER_URL", parse_base_url, None, "OpenID Connect provider's issuer URL."
    ),
    "oidc-client-id": Setting(
        "OIDC_CLIENT_ID", str.strip, None, "Client id registered at the OpenID provider."
    ),
    "oidc-name": Setting("OIDC_NAME", str.strip, "Single sign-on", "OpenID sign-in button label."),
    "oidc-scopes": Setting(
        "OIDC_SCOPES", parse_scopes, "openid email profile", "Scopes asked of the OpenID provider."
    ),
    "oidc-allowed-domains": Setting(
        "OIDC_ALLOWED_DOMAINS",
        parse_email_domains,
        None,
        "Comma-separated email domains that may sign in with GitHub or OpenID.",
        "any",
    ),
    "oidc-groups-claim": Setting(
        "OIDC_GROUPS_CLAIM", str.strip, None, "ID token claim listing the user's groups."
    ),
    "password-login": Setting(
        "PASSWORD_LOGIN",
        parse_on_off,
        "on",
        "on, or off: sign in only through GitHub or OpenID (one must be configured).",
    ),
    "access-log": Setting(
        "ACCESS_LOG",
        parse_access_log,
        "changes",
        "Which main-site requests are access-logged: all, changes (all but successful"
        " GET/HEAD requests to /api/, which open dashboards make every few seconds) or off.",
    ),
    "audit-retention-days": Setting(
        "AUDIT_RETENTION_DAYS",
        parse_retention_days,
        "365",
        "Days the audit log keeps an entry; 0 keeps them for ever.",
    ),
    # --backend k8s
    "kubeconfig": Setting(
        "KUBECONFIG",
        str,
        None,
        "Kubeconfig file for --backend k8s.",
        "in-cluster credentials, else ~/.kube/config",
    ),
    "sandbox-namespace": Setting(
        "SANDBOX_NAMESPACE",
        str.strip,
        None,
        "Namespace of the k8s backend's sandboxes.",
        "the server pod's namespace",
    ),
    "runtime-class": Setting(
        "SANDBOX_RUNTIME_CLASS", str.strip, None, "RuntimeClass of sandbox pods, e.g. gvisor."
    ),
    "storage-class": Setting(
        "STORAGE_CLASS_NAME",
        str.strip,
        None,
        "StorageClass of the k8s backend's volume claims.",
        "the cluster's default",
    ),
    "workspace-disk-access-mode": Setting(
        "WORKSPACE_DISK_ACCESS_MODE",
        parse_access_mode,
        "ReadWriteOnce",
        "Access mode of each workspace's claim: ReadWriteMany where the storage class has it"
        " (sandboxes of one workspace on several nodes need it).",
    ),
    "sandbox-resources": Setting(
        "SANDBOX_RESOURCES",
        parse_resources,
        None,
        'Sandbox pods\' resources as JSON, e.g. {"limits": {"memory": "1Gi", "cpu": "1"}}.',
        "limits of --sandbox-memory and --sandbox-cpus",
    ),
    "k8s-instance": Setting(
        "K8S_INSTANCE",
        str.strip,
        None,
        "Label value marking this deployment's sandboxes, Kubernetes objects or docker"
        " containers (the same on every replica).",
        "this data directory's instance id",
    ),
    "in-cluster-url": Setting(
        "IN_CLUSTER_URL",
        parse_base_url,
        "http://cli-server:8080",
        "The server's Service URL as sandbox pods reach it (the Anthropic proxy's base).",
    ),
}


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve the cli-server web UI, REST API, sandbox subdomain proxy and agent tunnel. "
        "With no --db-url an embedded PostgreSQL is started under --data-dir."
    )
    optParameters = [[name, None, None, setting.help_text()] for name, setting in SETTINGS.items()]
    optFlags = [
        [
            "allow-unisolated",
            None,
            "Run sandboxes without bubblewrap or network isolation "
            "(only where nothing else can; never on shared hosts).",
        ],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None, preflight: bool = True) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self._preflight = preflight
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint to serve HTTP on, e.g. tcp:8080 or unix:/run/cli.sock; repeatable
        [default tcp:8080]."""
        self["listen"].append(description)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]
        db_url_argument = self["db-url"] is not None
        for name, setting in SETTINGS.items():
            raw, source = self[name], f"--{name}"
            if raw is None and setting.env is not None and self._environ.get(setting.env):
                raw, source = self._environ[setting.env], setting.env
            if raw is None:
                raw = setting.default
            if raw is None:
                continue
            try:
                self[name] = setting.parse(raw)
            except ValueError as e:
                raise usage.UsageError(f"{source}: {e}") from None
        if db_url_argument and _has_password(self["db-url"]):
            raise usage.UsageError(
                "--db-url: a password on the command line is visible to every local user; "
                "pass the URL in DATABASE_URL, or the password in a PGPASSFILE"
            )
        if 0 < len(self._environ.get("INTERNAL_SECRET", "")) < 32:  # (signs replicas' requests)
            raise usage.UsageError("INTERNAL_SECRET: use at least 32 random characters")
        if self["data-dir"] is None:
            self["data-dir"] = default_data_dir()
        if self["advertise-url"] is None:
            self["advertise-url"] = default_advertise_url(self["listen"])
        if self["max-sandboxes"] is None:
            self["max-sandboxes"] = default_max_sandboxes()
        if self["proxy-workers"] is None:
            self["proxy-workers"] = os.cpu_count() or 1
        self._checkListen()
        self._checkSignIn()
        if self["backend"] == "docker":
            if not self["agent-image"]:
                raise usage.UsageError(
                    "--agent-image: the docker backend needs a sandbox image, e.g. the one "
                    "docker/build-offline-image prints [env AGENT_IMAGE]"
                )
        elif self["backend"] == "k8s":
            self._checkKubernetes()
        elif self._preflight:
            self._checkHost()

    def _checkHost(self) -> None:
        """Refuse at once what would make every sandbox fail later."""
        from cli_server.sandboxes.process_backend import check_isolation_tools, find_opencode

        found = find_opencode(self["opencode-bin"])
        if found is None or not found.is_file():
            where = self["opencode-bin"] or "on PATH or in ./node_modules"
            raise usage.UsageError(
                f"--opencode-bin: opencode not found {where}; run "
                "'npm install opencode-ai@1.18.33' here or pass --opencode-bin"
            )
        self["opencode-bin"] = str(found)
        why = check_isolation_tools()
        if why is not None and not self["allow-unisolated"]:
            raise usage.UsageError(
                f"--backend process: cannot isolate sandboxes: {why}; "
                "pass --allow-unisolated to run them without isolation"
            )
        self._checkDiskQuota()

    def _checkKubernetes(self) -> None:
        if not self["agent-image"]:
            raise usage.UsageError(
                "--agent-image: the k8s backend needs a sandbox image (docker/Dockerfile.sandbox,"
                " pushed where the cluster pulls from) [env AGENT_IMAGE]"
            )
        for name in ("workspace-disk-size", "sandbox-home-size"):
            if not self[name]:
                raise usage.UsageError(f"--{name}: the k8s backend's volume claims need a size")

    def _checkDiskQuota(self) -> None:
        """Quotas need root and loop devices: refused without them, unless turned off; with
        --allow-unisolated they apply where the host can and are left off where it cannot."""
        from cli_server.sandboxes.disk_quota import check_disk_quota

        sizes = ("workspace-disk-size", "sandbox-home-size")
        if not any(self[name] for name in sizes):
            return
        why = check_disk_quota()
        if why is None:
            return
        if self["allow-unisolated"]:
            for name in sizes:
                self[name] = 0
            return
        raise usage.UsageError(
            f"--workspace-disk-size: cannot give sandboxes disk quotas: {why}; pass "
            "--workspace-disk-size=off --sandbox-home-size=off to run without them"
        )

    def _checkSignIn(self) -> None:
        """Single sign-on is all or nothing per provider: a half-configured one fails here."""
        try:
            github_secret = read_secret(self._environ, "GITHUB_CLIENT_SECRET")
            oidc_secret = read_secret(self._environ, "OIDC_CLIENT_SECRET")
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["github"] = self["oidc"] = None
        if self["github-client-id"] or github_secret:
            if not (self["github-client-id"] and github_secret):
                missing = "GITHUB_CLIENT_SECRET" if github_secret is None else "GITHUB_CLIENT_ID"
                raise usage.UsageError(
                    f"{missing}: sign-in with GitHub needs both GITHUB_CLIENT_ID and "
                    "GITHUB_CLIENT_SECRET (or GITHUB_CLIENT_SECRET_FILE)"
                )
            urls = {}
            for key, env in (("web_url", "GITHUB_URL"), ("api_url", "GITHUB_API_URL")):
                if self._environ.get(env):  # (not in --help: only tests use another GitHub)
                    try:
                        urls[key] = parse_base_url(self._environ[env])
                    except ValueError as e:
                        raise usage.UsageError(f"{env}: {e}") from None
            self["github"] = GithubLogin(self["github-client-id"], github_secret, **urls)
        oidc = {
            "OIDC_ISSUER_URL": self["oidc-issuer-url"],
            "OIDC_CLIENT_ID": self["oidc-client-id"],
            "OIDC_CLIENT_SECRET": oidc_secret,
        }
        if any(oidc.values()):
            absent = [name for name, value in oidc.items() if not value]
            if absent:
                raise usage.UsageError(
                    f"{absent[0]}: OpenID sign-in needs OIDC_ISSUER_URL, OIDC_CLIENT_ID and "
                    "OIDC_CLIENT_SECRET (or OIDC_CLIENT_SECRET_FILE)"
                )
            self["oidc"] = OidcLogin(
                self["oidc-issuer-url"],
                self["oidc-client-id"],
                oidc_secret or "",
                name=self["oidc-name"] or "Single sign-on",
                scopes=self["oidc-scopes"],
                groups_claim=self["oidc-groups-claim"] or None,
            )
        if not self["password-login"] and not (self["github"] or self["oidc"]):
            raise usage.UsageError(
                "--password-login: off needs a sign-in provider (GITHUB_CLIENT_ID/SECRET or "
                "OIDC_ISSUER_URL/CLIENT_ID/CLIENT_SECRET), or nobody could sign in"
            )

    def _checkListen(self) -> None:
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.testing import MemoryReactor

        for description in self["listen"]:
            try:
                serverFromString(MemoryReactor(), description)
            except (ValueError, TypeError, KeyError, OSError) as e:  # (OSError: a missing key file)
                raise usage.UsageError(f"--listen {description!r}: {e}") from None

    def config(self) -> ServerConfig:
        return ServerConfig(
            listen=tuple(self["listen"]),
            data_dir=self["data-dir"],
            db_url=self["db-url"],
            base_domain=self["base-domain"],
            base_scheme=self["base-scheme"],
            session_lifetime=self["session-lifetime"],
            backend=self["backend"],
            opencode_bin=self["opencode-bin"],
            max_sandboxes=self["max-sandboxes"],
            max_sandboxes_per_workspace=self["max-sandboxes-per-workspace"],
            max_sandboxes_per_user=self["max-sandboxes-per-user"],
            max_sandboxes_stored_per_workspace=self["max-sandboxes-stored-per-workspace"],
            max_workspaces_per_user=self["max-workspaces-per-user"],
            direct_members=self["direct-members"] or (),
            idle_timeout=self["idle-timeout"],
            allow_unisolated=bool(self["allow-unisolated"]),
            anthropic_proxy_url=self["anthropic-proxy-url"],
            anthropic_base_url=self["anthropic-base-url"],
            sandbox_memory=self["sandbox-memory"],
            sandbox_pids=self["sandbox-pids"],
            sandbox_cpus=self["sandbox-cpus"],
            workspace_disk_size=self["workspace-disk-size"],
            sandbox_home_size=self["sandbox-home-size"],
            docker_url=self["docker-url"],
            docker_network=self["docker-network"],
            docker_firewall=self["docker-firewall"],
            agent_image=self["agent-image"],
            egress_allow=self["egress-allow"] or (),
            trusted_proxies=self["trusted-proxies"] or (),
            registration=self["registration"],
            github=self["github"],
            oidc=self["oidc"],
            sso_redirect_base_url=self["oidc-redirect-base-url"],
            sso_allowed_domains=self["oidc-allowed-domains"] or (),
            password_login=self["password-login"],
            access_log=self["access-log"],
            audit_retention_days=self["audit-retention-days"],
            proxy_workers=self["proxy-workers"],
            drain_timeout=self["drain-timeout"],
            kubeconfig=self["kubeconfig"],
            sandbox_namespace=self["sandbox-namespace"] or None,
            runtime_class=self["runtime-class"] or None,
            storage_class=self["storage-class"] or None,
            workspace_access_mode=self["workspace-disk-access-mode"],
            sandbox_resources=self["sandbox-resources"],
            k8s_instance=self["k8s-instance"] or None,
            in_cluster_url=self["in-cluster-url"],
            advertise_url=self["advertise-url"],
            anthropic_api_key=self._environ.get("ANTHROPIC_API_KEY") or None,
            anthropic_auth_token=self._environ.get("ANTHROPIC_AUTH_TOKEN") or None,
            internal_secret=self._environ.get("INTERNAL_SECRET") or None,
        )


def _has_password(db_url: str) -> bool:
    from psycopg2.extensions import parse_dsn

    try:
        return bool(parse_dsn(db_url).get("password"))
    except Exception:
        return False  # (parse_db_url has already accepted it)


# ``reactor``: the whole reactor (Any: it provides every interface, and Python has no
# intersection type); each part it is given to names the interfaces it uses.
def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    from cli_server.server import buildServer

    return buildServer(options.config(), reactor)
