"""Option and environment parsing for `twistd cli-server`."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import attrs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cli_server.config import ServerConfig, parse_base_domain, parse_duration
from cli_server.tap.server import Options


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Options:
    options = Options(environ=environ or {}, preflight=False)
    options.parseOptions(argv)
    return options


class DurationTests(SynchronousTestCase):
    def test_units(self) -> None:
        """Go-style durations, days, and bare seconds all parse to seconds."""
        cases = {
            "45s": 45,
            "30m": 1800,
            "1h30m": 5400,
            "7d": 604800,
            "90": 90,
            "1.5h": 5400,
            "250ms": 0.25,
            " 2H ": 7200,
        }
        for text, seconds in cases.items():
            self.assertEqual(parse_duration(text), seconds, text)

    def test_rejects(self) -> None:
        """Nonsense, empty, zero and negative durations are refused."""
        for text in ["", "soon", "30x", "m30", "1h 30m", "0", "-5", "0s"]:
            self.assertRaises(ValueError, parse_duration, text)


class BaseDomainTests(SynchronousTestCase):
    def test_accepts_hosts_with_ports(self) -> None:
        """Host names, with or without a port, are lower-cased."""
        self.assertEqual(parse_base_domain("Example.COM"), "example.com")
        self.assertEqual(parse_base_domain("localhost:8080"), "localhost:8080")
        self.assertEqual(
            parse_base_domain("a-b.c.example.:443".replace(".:", ":")), "a-b.c.example:443"
        )

    def test_rejects(self) -> None:
        """Spaces, schemes, paths, bad ports and bad labels are refused."""
        for text in [
            "",
            "bad domain",
            "http://x.com",
            "x.com/path",
            "x.com:0",
            "x.com:70000",
            "-x.com",
            "x..com",
            "x.com:port",
        ]:
            self.assertRaises(ValueError, parse_base_domain, text)


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """With nothing given, the server runs embedded on tcp:8080 for localhost:8080."""
        config = parse([]).config()
        self.assertEqual(config.listen, ("tcp:8080",))
        self.assertIsNone(config.db_url)
        self.assertEqual(config.base_domain, "localhost:8080")
        self.assertEqual(config.base_scheme, "http")
        self.assertEqual(config.session_lifetime, 7 * 86400)
        self.assertEqual(config.origin, "http://localhost:8080")
        self.assertFalse(config.secure_cookies)

    def test_environment(self) -> None:
        """The original product's environment variables configure the server."""
        config = parse(
            [],
            {
                "DATABASE_URL": "postgres://u:p@db:5432/cli",
                "BASE_DOMAIN": "Code.Example.com",
                "BASE_SCHEME": "https",
                "CLI_SERVER_DATA": "/srv/cli",
                "SESSION_LIFETIME": "12h",
                "MAX_SANDBOXES": "8",
                "PROXY_WORKERS": "1",
            },
        ).config()
        self.assertEqual(
            config,
            ServerConfig(
                listen=("tcp:8080",),
                data_dir=Path("/srv/cli"),
                db_url="postgres://u:p@db:5432/cli",
                base_domain="code.example.com",
                base_scheme="https",
                session_lifetime=43200.0,
                advertise_url=f"http://{socket.gethostname()}:8080",
            ),
        )
        self.assertTrue(config.secure_cookies)

    def test_command_line_wins(self) -> None:
        """An option on the command line overrides the environment; --listen repeats."""
        config = parse(
            [
                "--base-scheme",
                "http",
                "--listen",
                "tcp:9000",
                "--listen",
                "unix:/tmp/cli.sock",
                "--data-dir",
                "/var/tmp/x",
            ],
            {"BASE_SCHEME": "https"},
        ).config()
        self.assertEqual(config.base_scheme, "http")
        self.assertEqual(config.listen, ("tcp:9000", "unix:/tmp/cli.sock"))
        self.assertEqual(config.data_dir, Path("/var/tmp/x"))

    def test_proxy_workers(self) -> None:
        """One relay worker per CPU by default; 0 is none; a bad count stops the start with
        one line naming the option."""
        self.assertEqual(parse([]).config().proxy_workers, os.cpu_count() or 1)
        self.assertEqual(parse(["--proxy-workers", "0"]).config().proxy_workers, 0)
        self.assertEqual(parse([], {"PROXY_WORKERS": "3"}).config().proxy_workers, 3)
        for bad in ("-1", "two", "257", ""):
            with self.assertRaises(usage.UsageError) as caught:
                parse(["--proxy-workers", bad])
            self.assertIn("--proxy-workers", str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    def test_internal_secret(self) -> None:
        """INTERNAL_SECRET, from the environment only, never shown; a short one is refused."""
        secret = "s" * 40
        config = parse([], {"INTERNAL_SECRET": secret}).config()
        self.assertEqual(config.internal_secret, secret)
        self.assertNotIn(secret, repr(config))
        self.assertIsNone(parse([]).config().internal_secret)
        error = self.assertRaises(usage.UsageError, parse, [], {"INTERNAL_SECRET": "short"})
        self.assertEqual(str(error), "INTERNAL_SECRET: use at least 32 random characters")

    def test_sandbox_settings(self) -> None:
        """Backend, capacity and idleness come from options or the original's env vars."""
        config = parse(
            ["--max-sandboxes", "3", "--allow-unisolated"],
            {"IDLE_TIMEOUT": "5m", "BACKEND": "process"},
        ).config()
        self.assertEqual(
            (config.backend, config.max_sandboxes, config.idle_timeout), ("process", 3, 300.0)
        )
        self.assertTrue(config.allow_unisolated)
        self.assertGreaterEqual(parse([]).config().max_sandboxes, 1)

    def test_docker_settings(self) -> None:
        """The docker backend takes its engine, image and network from options or env."""
        config = parse(
            ["--backend", "docker", "--agent-image", "img:1"],
            {"DOCKER_HOST": "unix:///x.sock", "DOCKER_NETWORK": "net"},
        ).config()
        self.assertEqual(
            (config.backend, config.agent_image, config.docker_url, config.docker_network),
            ("docker", "img:1", "unix:///x.sock", "net"),
        )

    def test_sandbox_limits(self) -> None:
        """Memory, processes and CPUs per sandbox; sizes take k/m/g suffixes."""
        config = parse(
            ["--sandbox-memory", "1.5g", "--sandbox-pids", "64"], {"SANDBOX_CPUS": "0.5"}
        ).config()
        self.assertEqual(
            (config.sandbox_memory, config.sandbox_pids, config.sandbox_cpus),
            (int(1.5 * 1024**3), 64, 0.5),
        )
        self.assertEqual(parse([]).config().sandbox_memory, 2 * 1024**3)
        for argv, message in [
            (["--sandbox-memory", "lots"], "is not a size"),
            (["--sandbox-memory", "1m"], "below the 64 MiB"),
            (["--sandbox-cpus", "0"], "between 0.01 and 1024"),
        ]:
            self.assertIn(message, str(self.assertRaises(usage.UsageError, parse, argv)))

    def test_egress_allow(self) -> None:
        """--egress-allow / EGRESS_ALLOW: comma-separated CIDRs, none by default; a bad
        entry fails at start naming the option and the entry."""
        self.assertEqual(parse([]).config().egress_allow, ())
        config = parse([], {"EGRESS_ALLOW": "10.1.0.0/16, 192.0.2.9"}).config()
        self.assertEqual([str(n) for n in config.egress_allow], ["10.1.0.0/16", "192.0.2.9/32"])
        error = self.assertRaises(usage.UsageError, parse, ["--egress-allow", "10.0.0.0/8,lan"])
        self.assertEqual(
            str(error), "--egress-allow: 'lan' is not an IP address or network (e.g. 10.1.0.0/16)"
        )

    def test_preflight(self) -> None:
        """A missing opencode binary is refused at start, naming the option and the fix."""
        options = Options(environ={})
        error = self.assertRaises(
            usage.UsageError, options.parseOptions, ["--opencode-bin", "/nonexistent/opencode"]
        )
        self.assertIn("--opencode-bin: opencode not found /nonexistent/opencode", str(error))
        self.assertIn("npm install opencode-ai@1.18.33", str(error))

    def test_errors_name_the_source(self) -> None:
        """A bad value names the option, or the variable it came from."""
        cases = [
            (["--base-scheme", "ftp"], {}, "--base-scheme: 'ftp' must be http or https"),
            ([], {"BASE_SCHEME": "ftp"}, "BASE_SCHEME: 'ftp' must be http or https"),
            (["--session-lifetime", "0"], {}, "--session-lifetime: '0' must be longer than zero"),
            (["--listen", "bogus:1"], {}, "--listen 'bogus:1'"),
            (
                ["--listen", "ssl:8443:privateKey=/nonexistent/key.pem"],
                {},
                "--listen 'ssl:8443:privateKey=/nonexistent/key.pem': [Errno 2]",
            ),
            (["--db-url", "nonsense"], {}, "--db-url: not a PostgreSQL connection string"),
            (
                ["--db-url", "postgres://cli:secret@db:5432/cli"],
                {},
                "--db-url: a password on the command line is visible to every local user",
            ),
            (["--max-sandboxes", "0"], {}, "--max-sandboxes: '0' must be at least 1"),
            ([], {"IDLE_TIMEOUT": "forever"}, "IDLE_TIMEOUT: 'forever' is not a duration"),
            (
                ["--backend", "docker"],
                {},
                "--agent-image: the docker backend needs a sandbox image",
            ),
            (["--backend", "k8s"], {}, "--agent-image: the k8s backend needs a sandbox image"),
            (
                ["--backend", "k8s", "--agent-image", "i", "--sandbox-resources", "[1]"],
                {},
                "--sandbox-resources: give an object with limits and/or requests",
            ),
            (
                ["--backend", "k8s", "--agent-image", "i"],
                {"WORKSPACE_DISK_ACCESS_MODE": "rwx"},
                "WORKSPACE_DISK_ACCESS_MODE: 'rwx' is not an access mode",
            ),
            (["--backend", "vm"], {}, "--backend: 'vm' is not a backend"),
        ]
        for argv, environ, message in cases:
            error = self.assertRaises(usage.UsageError, parse, argv, environ)
            self.assertIn(message, str(error))


class KubernetesOptionsTests(SynchronousTestCase):
    def test_k8s_options(self) -> None:
        """The k8s backend's options reach the config; defaults where unset."""
        config = parse(
            ["--backend", "k8s", "--agent-image", "img:1", "--runtime-class", "gvisor"],
            {
                "SANDBOX_NAMESPACE": "sbx",
                "SANDBOX_RESOURCES": '{"limits": {"memory": "1Gi", "cpu": 1}}',
                "K8S_INSTANCE": "cli",
                "IN_CLUSTER_URL": "http://cli.ns.svc:8080",
            },
        ).config()
        self.assertEqual(config.backend, "k8s")
        self.assertEqual(config.sandbox_namespace, "sbx")
        self.assertEqual(config.runtime_class, "gvisor")
        self.assertEqual(config.sandbox_resources, {"limits": {"memory": "1Gi", "cpu": "1"}})
        self.assertEqual(config.k8s_instance, "cli")
        self.assertEqual(config.in_cluster_url, "http://cli.ns.svc:8080")
        self.assertEqual(config.workspace_access_mode, "ReadWriteOnce")
        self.assertIsNone(config.kubeconfig)
        self.assertIsNone(config.storage_class)


class TenancyOptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """Out of the box: 10 sandboxes per workspace, 5 per person, nobody added directly."""
        config = parse([]).config()
        self.assertEqual(
            (config.max_sandboxes_per_workspace, config.max_sandboxes_per_user), (10, 5)
        )
        self.assertEqual(config.direct_members, ())

    def test_options_and_environment(self) -> None:
        """The limits and direct adds come from options or their environment variables."""
        config = parse(
            ["--max-sandboxes-per-user", "2"],
            {"MAX_SANDBOXES_PER_WORKSPACE": "7", "DIRECT_MEMBERS": " @Corp.Example , b.example."},
        ).config()
        self.assertEqual(
            (
                config.max_sandboxes_per_workspace,
                config.max_sandboxes_per_user,
                config.direct_members,
            ),
            (7, 2, ("corp.example", "b.example")),
        )
        self.assertEqual(parse(["--direct-members", "*"]).config().direct_members, ("*",))
        self.assertEqual(parse(["--direct-members", " , "]).config().direct_members, ())

    def test_bad_values(self) -> None:
        """A bad limit or domain fails at start with one line naming where it came from."""
        cases = [
            (["--max-sandboxes-per-user", "0"], {}, "--max-sandboxes-per-user: '0' must be"),
            ([], {"MAX_SANDBOXES_PER_WORKSPACE": "many"}, "MAX_SANDBOXES_PER_WORKSPACE: 'many'"),
            (["--direct-members", "a@b.example"], {}, "--direct-members: 'a@b.example' is not"),
            ([], {"DIRECT_MEMBERS": "x.example:80"}, "DIRECT_MEMBERS: 'x.example:80' is not"),
            (["--direct-members", "*.example"], {}, "an email domain such as example.com"),
        ]
        for argv, environ, message in cases:
            error = str(self.assertRaises(usage.UsageError, parse, argv, environ))
            self.assertIn(message, error)
            self.assertNotIn("\n", error)


class WarningTests(SynchronousTestCase):
    def test_plain_http_under_a_real_name_is_warned_about(self) -> None:
        """Over http, a sandbox page can toss a cookie for the whole base domain; browsers
        keep *.localhost apart, so a local trial is not warned about."""
        base = ServerConfig(
            (), Path("/d"), None, "localhost:8080", "http", 60.0, anthropic_api_key="k"
        )
        self.assertEqual(base.warnings(), [])
        self.assertEqual(attrs.evolve(base, base_domain="dev.localhost").warnings(), [])
        team = attrs.evolve(base, base_domain="cli.example.com")
        (warning,) = team.warnings()
        self.assertIn("BASE_SCHEME is http for cli.example.com", warning)
        self.assertEqual(attrs.evolve(team, base_scheme="https").warnings(), [])

    def test_a_proxy_url_the_process_backend_cannot_use_is_warned_about(self) -> None:
        base = ServerConfig(
            (), Path("/d"), None, "localhost:8080", "http", 60.0, anthropic_auth_token="t"
        )
        (warning,) = attrs.evolve(base, anthropic_proxy_url="http://10.0.0.1/x").warnings()
        self.assertIn("ANTHROPIC_PROXY_URL is set with the process backend", warning)
        docker = attrs.evolve(base, backend="docker", anthropic_proxy_url="http://10.0.0.1/x")
        self.assertEqual(docker.warnings(), [])


class StorageLimitOptionsTests(SynchronousTestCase):
    def test_defaults_options_and_environment(self) -> None:
        """10 workspaces per person and 20 stored sandboxes per workspace out of the box;
        options or environment variables change them; a bad value fails in one line."""
        config = parse([]).config()
        self.assertEqual(
            (config.max_workspaces_per_user, config.max_sandboxes_stored_per_workspace), (10, 20)
        )
        config = parse(
            ["--max-workspaces-per-user", "2"], {"MAX_SANDBOXES_STORED_PER_WORKSPACE": "4"}
        ).config()
        self.assertEqual(
            (config.max_workspaces_per_user, config.max_sandboxes_stored_per_workspace), (2, 4)
        )
        for argv, environ, message in [
            (["--max-workspaces-per-user", "0"], {}, "--max-workspaces-per-user: '0' must be"),
            ([], {"MAX_SANDBOXES_STORED_PER_WORKSPACE": "x"}, "MAX_SANDBOXES_STORED_PER_WORKSPACE"),
        ]:
            error = str(self.assertRaises(usage.UsageError, parse, argv, environ))
            self.assertIn(message, error)
            self.assertNotIn("\n", error)


class ClaudeWarningTests(SynchronousTestCase):
    def test_no_anthropic_credentials_is_warned_about(self) -> None:
        """Without a key or token, prompts fail: the operator hears it once, at start."""
        base = ServerConfig((), Path("/d"), None, "localhost:8080", "http", 60.0)
        (warning,) = base.warnings()
        self.assertIn("Claude is not set up", warning)
        self.assertIn("ANTHROPIC_API_KEY", warning)
        for secret in ({"anthropic_api_key": "k"}, {"anthropic_auth_token": "t"}):
            self.assertEqual(attrs.evolve(base, **secret).warnings(), [])
        # A base URL alone is not enough: the proxy forwards only with credentials.
        only_url = attrs.evolve(base, anthropic_base_url="http://127.0.0.1:9")
        self.assertEqual(len(only_url.warnings()), 1)


class RegistrationOptionTests(SynchronousTestCase):
    def test_default_option_and_environment(self) -> None:
        """open out of the box; --registration or REGISTRATION, any case, say otherwise."""
        self.assertEqual(parse([]).config().registration, "open")
        self.assertEqual(parse([], {"REGISTRATION": "Invite"}).config().registration, "invite")
        config = parse(["--registration", "closed"], {"REGISTRATION": "open"}).config()
        self.assertEqual(config.registration, "closed")

    def test_bad_value(self) -> None:
        """Anything else fails at start with one line naming the modes."""
        for argv, environ, source in [
            (["--registration", "invite-only"], {}, "--registration"),
            ([], {"REGISTRATION": "yes"}, "REGISTRATION"),
        ]:
            error = str(self.assertRaises(usage.UsageError, parse, argv, environ))
            self.assertTrue(error.startswith(f"{source}: "), error)
            self.assertIn("is not a registration mode (open, invite or closed)", error)
            self.assertNotIn("\n", error)


class AccessLogOptionTests(SynchronousTestCase):
    def test_default_option_and_environment(self) -> None:
        """changes out of the box; --access-log or ACCESS_LOG, any case, say otherwise."""
        self.assertEqual(parse([]).config().access_log, "changes")
        self.assertEqual(parse([], {"ACCESS_LOG": "ALL"}).config().access_log, "all")
        config = parse(["--access-log", "off"], {"ACCESS_LOG": "all"}).config()
        self.assertEqual(config.access_log, "off")

    def test_bad_value(self) -> None:
        """Anything else fails at start with one line naming the modes."""
        for argv, environ, source in [
            (["--access-log", "some"], {}, "--access-log"),
            ([], {"ACCESS_LOG": "yes"}, "ACCESS_LOG"),
        ]:
            error = str(self.assertRaises(usage.UsageError, parse, argv, environ))
            self.assertTrue(error.startswith(f"{source}: "), error)
            self.assertIn("is not an access-log mode (all, changes or off)", error)
            self.assertNotIn("\n", error)
