"""The docker sandboxes' firewall rules: rendering, applying (against a recording fake of
iptables), when the server writes them itself, and the backend's settings around them."""

from __future__ import annotations

import subprocess
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cli_server.plumbing.threads import synchronous_runner
from cli_server.sandboxes import docker_firewall
from cli_server.sandboxes.docker_backend import (
    DockerBackend,
    DockerSettings,
    door_addresses,
    firewall_refusal,
    seccomp_refusal,
)
from cli_server.sandboxes.docker_firewall import EgressRules
from cli_server.sandboxes.egress import EgressPolicy, attached_networks
from cli_server.sandboxes.opencode import OpencodeClient
from cli_server.tap.server import Options


def _rules(**changes: Any) -> EgressRules:
    given: dict[str, Any] = dict(
        prefix="CLI-SBX-abcd1234",
        bridge="clisbx-abcd1234",
        gateway="172.18.0.1",
        doors=(("172.18.0.1", 8080),),
        denied=tuple(EgressPolicy(allow=[ip_network("10.1.0.0/16")]).denied()),
        allowed=(ip_network("10.1.0.0/16"),),
    )
    given.update(changes)
    return EgressRules(**given)


class RenderingTests(SynchronousTestCase):
    def test_forward_chain_rejects_denied_networks(self) -> None:
        """Forwarded traffic: replies pass, allowed networks pass, every denied network of
        the family is rejected, and nothing else is said (the internet falls through)."""
        text = _rules().restore_text(4).splitlines()
        fwd = [ln for ln in text if ln.startswith("-A CLI-SBX-abcd1234-FWD")]
        self.assertEqual(
            fwd[0], "-A CLI-SBX-abcd1234-FWD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
        )
        self.assertEqual(
            fwd[1], "-A CLI-SBX-abcd1234-FWD -d 172.18.0.1/32 -p tcp --dport 8080 -j RETURN"
        )
        self.assertEqual(fwd[2], "-A CLI-SBX-abcd1234-FWD -d 10.1.0.0/16 -j RETURN")
        for network in ("169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"):
            self.assertIn(f"-A CLI-SBX-abcd1234-FWD -d {network} -j REJECT", fwd)
        self.assertTrue(all(ln.endswith(("RETURN", "REJECT")) for ln in fwd))
        self.assertNotIn("fc00::/7", "\n".join(text))
        self.assertEqual(
            text[:3], ["*filter", ":CLI-SBX-abcd1234-FWD - [0:0]", ":CLI-SBX-abcd1234-HOST - [0:0]"]
        )
        self.assertEqual(text[-1], "COMMIT")

    def test_host_chain_opens_the_door_only(self) -> None:
        """To the host's own addresses: replies, the door on our gateway and allowed networks
        pass; the chain ends in a reject of everything else."""
        host = [
            ln
            for ln in _rules().restore_text(4).splitlines()
            if ln.startswith("-A CLI-SBX-abcd1234-HOST")
        ]
        self.assertEqual(
            host,
            [
                "-A CLI-SBX-abcd1234-HOST -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A CLI-SBX-abcd1234-HOST -d 172.18.0.1/32 -p tcp --dport 8080 -j ACCEPT",
                "-A CLI-SBX-abcd1234-HOST -d 10.1.0.0/16 -j ACCEPT",
                "-A CLI-SBX-abcd1234-HOST -j REJECT",
            ],
        )

    def test_no_door_without_a_port_and_none_in_ipv6(self) -> None:
        """No door on the host (the proxy elsewhere): the host is closed entirely; IPv6 has
        no door and rejects the IPv6 denied networks."""
        closed = _rules(doors=()).restore_text(4)
        self.assertNotIn("--dport", closed)
        six = _rules().restore_text(6)
        self.assertNotIn("--dport", six)
        self.assertIn("-A CLI-SBX-abcd1234-FWD -d fc00::/7 -j REJECT", six)
        self.assertIn("-A CLI-SBX-abcd1234-FWD -d ff00::/8 -j REJECT", six)
        self.assertNotIn("10.0.0.0/8", six)

    def test_operator_script(self) -> None:
        """The operator's commands: both families, check-then-insert jumps (safe to rerun)."""
        script = _rules().operator_script()
        self.assertIn("iptables-restore --noflush <<'EOF'", script)
        self.assertIn("ip6tables-restore --noflush <<'EOF'", script)
        self.assertIn(
            "iptables -C DOCKER-USER -i clisbx-abcd1234 -j CLI-SBX-abcd1234-FWD 2>/dev/null"
            " || iptables -I DOCKER-USER 1 -i clisbx-abcd1234 -j CLI-SBX-abcd1234-FWD",
            script,
        )
        self.assertIn("ip6tables -I INPUT 1 -i clisbx-abcd1234 -j CLI-SBX-abcd1234-HOST", script)

    def test_names_fit_the_kernel(self) -> None:
        """Bridge names have at most 15 characters, chain names at most 28; both are stable
        per instance and differ between instances."""
        instance = "0f3c2a1e-5b7d-4e9f-8a6b-1c2d3e4f5a6b"
        self.assertLessEqual(len(docker_firewall.bridge_name(instance)), 15)
        self.assertLessEqual(len(docker_firewall.chain_prefix(instance) + "-HOST"), 28)
        self.assertEqual(
            docker_firewall.bridge_name(instance), docker_firewall.bridge_name(instance)
        )
        self.assertNotEqual(docker_firewall.bridge_name("a"), docker_firewall.bridge_name("b"))


@define
class FakeIptables:
    """Answers like iptables for the calls apply/remove make: chains and their rules kept as
    ``-S`` prints them; every call recorded."""

    chains: dict[str, dict[str, list[str]]]  # tool -> chain -> "-A ..." lines
    calls: list[list[str]] = field(factory=list)
    refuse: str | None = None  # an argv[0] that fails

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        assert argv[1] == "-w", argv  # always waiting for the engine's lock
        argv = [argv[0], *argv[2:]]
        tool = argv[0].removesuffix("-restore")
        if argv[0] == self.refuse:
            return subprocess.CompletedProcess(argv, 1, "", "iptables: Permission denied.\n")
        chains = self.chains.setdefault(tool, {})
        if argv[0].endswith("-restore"):
            current = None
            for line in kwargs["input"].splitlines():
                if line.startswith(":"):
                    chains[line[1:].split()[0]] = []
                elif line.startswith("-A "):
                    current = line.split()[1]
                    chains[current].append(line)
            return subprocess.CompletedProcess(argv, 0, "", "")
        op, chain, rule = argv[1], argv[2], argv[3:]
        if chain not in chains:
            return subprocess.CompletedProcess(argv, 1, "", "No chain by that name\n")
        line = " ".join(["-A", chain, *rule])
        if op == "-S":
            return subprocess.CompletedProcess(
                argv, 0, "\n".join([f"-N {chain}", *chains[chain]]), ""
            )
        if op == "-C":
            return subprocess.CompletedProcess(argv, 0 if line in chains[chain] else 1, "", "")
        if op == "-I":
            chains[chain].insert(int(rule[0]) - 1, " ".join(["-A", chain, *rule[1:]]))
        elif op == "-D":
            chains[chain].remove(line)
        elif op == "-F":
            chains[chain] = []
        elif op == "-X":
            del chains[chain]
        return subprocess.CompletedProcess(argv, 0, "", "")


def _engine_host() -> FakeIptables:
    return FakeIptables(
        {
            "iptables": {
                "INPUT": [],
                "FORWARD": ["-A FORWARD -j DOCKER-USER"],
                "DOCKER-USER": ["-A DOCKER-USER -j RETURN"],
            },
            "ip6tables": {"INPUT": [], "FORWARD": []},
        }
    )


class ApplyTests(SynchronousTestCase):
    def test_jumps_once_first_in_line(self) -> None:
        """The jumps go first in DOCKER-USER and INPUT (FORWARD for IPv6, which has no
        DOCKER-USER), and applying again adds nothing."""
        host = _engine_host()
        docker_firewall.apply(_rules(), run=host)
        docker_firewall.apply(_rules(), run=host)
        v4, v6 = host.chains["iptables"], host.chains["ip6tables"]
        self.assertEqual(
            v4["DOCKER-USER"],
            [
                "-A DOCKER-USER -i clisbx-abcd1234 -j CLI-SBX-abcd1234-FWD",
                "-A DOCKER-USER -j RETURN",
            ],
        )
        self.assertEqual(v4["INPUT"], ["-A INPUT -i clisbx-abcd1234 -j CLI-SBX-abcd1234-HOST"])
        self.assertEqual(v6["FORWARD"], ["-A FORWARD -i clisbx-abcd1234 -j CLI-SBX-abcd1234-FWD"])
        self.assertEqual(v4["CLI-SBX-abcd1234-HOST"][-1], "-A CLI-SBX-abcd1234-HOST -j REJECT")
        self.assertEqual(v4["FORWARD"], ["-A FORWARD -j DOCKER-USER"])  # untouched

    def test_rules_replaced_and_stale_jumps_removed(self) -> None:
        """A changed allow-list replaces the chain's rules; a jump for a bridge we no longer
        use is removed."""
        host = _engine_host()
        docker_firewall.apply(_rules(bridge="br-0123456789ab"), run=host)
        changed = _rules(allowed=(), denied=(ip_network("10.0.0.0/8"),), doors=())
        docker_firewall.apply(changed, run=host)
        v4 = host.chains["iptables"]
        self.assertEqual(
            v4["DOCKER-USER"],
            [
                "-A DOCKER-USER -i clisbx-abcd1234 -j CLI-SBX-abcd1234-FWD",
                "-A DOCKER-USER -j RETURN",
            ],
        )
        self.assertEqual(v4["INPUT"], ["-A INPUT -i clisbx-abcd1234 -j CLI-SBX-abcd1234-HOST"])
        self.assertEqual(
            v4["CLI-SBX-abcd1234-FWD"],
            [
                "-A CLI-SBX-abcd1234-FWD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-A CLI-SBX-abcd1234-FWD -d 10.0.0.0/8 -j REJECT",
            ],
        )

    def test_remove_leaves_nothing_of_ours(self) -> None:
        """remove takes out the jumps and both chains in both families, nothing else."""
        host = _engine_host()
        docker_firewall.apply(_rules(), run=host)
        docker_firewall.remove(_rules(), run=host)
        self.assertEqual(host.chains, _engine_host().chains)

    def test_refusal_is_an_error(self) -> None:
        """A firewall that refuses the rules raises, naming the tool and its complaint."""
        host = _engine_host()
        host.refuse = "iptables-restore"
        with self.assertRaises(RuntimeError) as caught:
            docker_firewall.apply(_rules(), run=host)
        self.assertIn(
            "iptables-restore refused our rules: iptables: Permission denied.",
            str(caught.exception),
        )


class WhoWritesTests(SynchronousTestCase):
    def test_reasons(self) -> None:
        """The server writes the rules only as root, with the tools, and with the engine's
        bridge on this host; otherwise it says which of these is missing."""
        here = Path(self.mktemp())
        (here / "clisbx-abcd1234").mkdir(parents=True)

        def which(tool: str) -> str | None:
            return f"/usr/sbin/{tool}"

        def check(bridge: str = "clisbx-abcd1234", euid: int = 0, tools: Any = which) -> str | None:
            return docker_firewall.cannot_apply(bridge, lambda: euid, tools, here)

        self.assertIsNone(check())
        self.assertIn("not on this host", str(check(bridge="clisbx-elsewhere")))
        self.assertIn("only root", str(check(euid=1000)))
        self.assertIn(
            "ip6tables not found",
            str(check(tools=lambda t: None if t == "ip6tables" else which(t))),
        )


DEFAULT_URL = "http://host.docker.internal:8080/proxy/anthropic/v1"


def _backend(
    url: str = DEFAULT_URL,
    client: Any = None,
    **more: Any,
) -> DockerBackend:
    from twisted.internet.testing import MemoryReactorClock

    settings = DockerSettings(None, "image", url, **more)
    return DockerBackend(
        synchronous_runner, settings, "i", OpencodeClient(MemoryReactorClock()), client=client
    )


class BackendSettingsTests(SynchronousTestCase):
    def test_doors(self) -> None:
        """The door: our gateway for host.docker.internal; else ANTHROPIC_PROXY_URL's
        address (a literal, or what its name resolves to), at its port."""

        def doors(gateway: str | None, url: str = DEFAULT_URL) -> Any:
            return door_addresses(DockerSettings(None, "image", url).door, gateway)

        self.assertEqual(doors("172.18.0.1"), (("172.18.0.1", 8080),))
        self.assertEqual(doors(None), ())
        self.assertEqual(
            doors("172.18.0.1", "http://host.docker.internal/v1"), (("172.18.0.1", 80),)
        )
        literal = "https://192.0.2.2/proxy/anthropic/v1"
        self.assertEqual(doors("172.18.0.1", literal), (("192.0.2.2", 443),))
        named = "http://localhost:8443/proxy/anthropic/v1"  # from /etc/hosts
        self.assertIn(("127.0.0.1", 8443), doors("172.18.0.1", named))
        nowhere = "http://no-such-name.invalid:8080/proxy/anthropic/v1"
        self.assertEqual(doors("172.18.0.1", nowhere), ())

    def test_door_elsewhere_passes_both_chains(self) -> None:
        """A proxy on another private address passes forwarding too; the host only at its
        port."""
        only = _rules(doors=(("10.1.2.3", 443),), allowed=(), denied=(ip_network("10.0.0.0/8"),))
        text = only.restore_text(4)
        self.assertIn("-A CLI-SBX-abcd1234-FWD -d 10.1.2.3/32 -p tcp --dport 443 -j RETURN", text)
        self.assertIn("-A CLI-SBX-abcd1234-HOST -d 10.1.2.3/32 -p tcp --dport 443 -j ACCEPT", text)
        fwd = [ln for ln in text.splitlines() if "-FWD" in ln and ln.startswith("-A")]
        self.assertLess(
            fwd.index("-A CLI-SBX-abcd1234-FWD -d 10.1.2.3/32 -p tcp --dport 443 -j RETURN"),
            fwd.index("-A CLI-SBX-abcd1234-FWD -d 10.0.0.0/8 -j REJECT"),
        )

    def test_engine_without_seccomp_is_refused(self) -> None:
        """An engine that applies no seccomp profile, or unconfined by default, runs no
        sandbox; the engine's default profile passes."""
        for options in ([], ["name=apparmor"], ["name=seccomp,profile=unconfined"]):
            why = seccomp_refusal(options)
            assert why is not None
            self.assertIn("no seccomp profile", why)
        self.assertIsNone(seccomp_refusal(["name=seccomp,profile=default", "name=cgroupns"]))

    def test_turned_off(self) -> None:
        """--docker-firewall off: the server never writes rules, and says so."""
        settings = _backend(firewall=False).settings
        why = firewall_refusal(settings, "br-x", lambda bridge: None)
        self.assertIn("turned off", str(why))
        on = _backend().settings
        self.assertIsNone(firewall_refusal(on, "br-x", lambda bridge: None))
        self.assertEqual(firewall_refusal(on, "br-x", lambda bridge: f"no {bridge}"), "no br-x")


class OptionTests(SynchronousTestCase):
    def test_docker_firewall_option(self) -> None:
        """auto (the default) or off; anything else fails at start with one line."""
        base = ["--backend", "docker", "--agent-image", "img"]
        options = Options(environ={}, preflight=False)
        options.parseOptions(base)
        self.assertTrue(options.config().docker_firewall)
        options = Options(environ={"DOCKER_FIREWALL": "off"}, preflight=False)
        options.parseOptions(base)
        self.assertFalse(options.config().docker_firewall)
        options = Options(environ={}, preflight=False)
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions([*base, "--docker-firewall", "maybe"])
        self.assertEqual(
            str(caught.exception), "--docker-firewall: 'maybe' is neither auto nor off"
        )

    def test_attached_networks_rejected(self) -> None:
        """A public network beside the host (its LAN, its router) is rejected when routed,
        as the private ranges are; the allow-list still opens part of it."""
        policy = EgressPolicy(
            host_networks=[ip_network("203.0.113.0/24"), ip_network("2001:db8:1::/64")],
            allow=[ip_network("203.0.113.128/25")],
        )
        rules = _rules(denied=tuple(policy.denied()), allowed=policy.allow)
        self.assertIn("-A CLI-SBX-abcd1234-FWD -d 203.0.113.0/25 -j REJECT", rules.restore_text(4))
        self.assertIn(
            "-A CLI-SBX-abcd1234-FWD -d 203.0.113.128/25 -j RETURN", rules.restore_text(4)
        )
        self.assertIn("-A CLI-SBX-abcd1234-FWD -d 2001:db8:1::/64 -j REJECT", rules.restore_text(6))

    def test_egress_allow_reaches_the_docker_rules(self) -> None:
        """EGRESS_ALLOW's networks are what the docker rules let through."""
        options = Options(environ={"EGRESS_ALLOW": "10.99.0.0/24, 192.168.5.7"}, preflight=False)
        options.parseOptions(["--backend", "docker", "--agent-image", "img"])
        allow = options.config().egress_allow
        self.assertEqual(allow, (ip_network("10.99.0.0/24"), ip_network("192.168.5.7/32")))
        policy = EgressPolicy(allow=allow)
        text = _rules(denied=tuple(policy.denied()), allowed=allow).restore_text(4)
        self.assertIn("-A CLI-SBX-abcd1234-FWD -d 10.99.0.0/24 -j RETURN", text)
        self.assertIn("-A CLI-SBX-abcd1234-HOST -d 192.168.5.7/32 -j ACCEPT", text)
        self.assertNotIn("-d 10.0.0.0/8 -j REJECT", text)


@define
class FakeNetwork:
    attrs: dict[str, Any]

    def reload(self) -> None:
        pass


@define
class FakeNetworks:
    """The engine's networks: ours exists, made by an older server without a bridge name."""

    made: list[str] = field(factory=list)

    def get(self, name: str) -> FakeNetwork:
        return FakeNetwork(
            {
                "Id": "0123456789abcdef",
                "Options": {"com.docker.network.bridge.enable_icc": "false"},
                "IPAM": {"Config": [{"Subnet": "172.20.0.0/16", "Gateway": "172.20.0.1"}]},
            }
        )


@define
class FakeClient:
    networks: FakeNetworks = field(factory=FakeNetworks)


class PrepareTests(SynchronousTestCase):
    def test_says_what_the_operator_must_apply(self) -> None:
        """Where the server cannot write the rules, it logs why and the exact commands, for
        the bridge the engine really has (br-<id> for a network made before we named it)."""
        from twisted.logger import capturedLogs

        backend = DockerBackend(
            synchronous_runner,
            DockerSettings(None, "image", "http://host.docker.internal:8080/proxy/anthropic/v1"),
            "i",
            OpencodeClient(MemoryReactorClock()),
            firewall_apply=lambda rules: self.fail("applied"),
            firewall_refusal=lambda bridge: "only root can change the host's firewall",
            client=FakeClient(),
        )
        with capturedLogs() as events:
            self.successResultOf(backend.prepare())
        (event,) = events
        self.assertEqual(event["why"], "only root can change the host's firewall")
        self.assertIn("iptables -I INPUT 1 -i br-0123456789ab -j CLI-SBX-", event["script"])
        self.assertIn("-d 172.20.0.1/32 -p tcp --dport 8080 -j ACCEPT", event["script"])

    def test_applies_where_it_can(self) -> None:
        """As root beside the engine: the rules for our bridge and gateway are written."""
        written: list[EgressRules] = []
        backend = DockerBackend(
            synchronous_runner,
            DockerSettings(None, "image", "http://host.docker.internal:9/proxy/anthropic/v1"),
            "i",
            OpencodeClient(MemoryReactorClock()),
            firewall_apply=written.append,
            firewall_refusal=lambda bridge: None,
            client=FakeClient(),
        )
        self.successResultOf(backend.prepare())
        (rules,) = written
        self.assertEqual(
            (rules.bridge, rules.gateway, rules.doors),
            ("br-0123456789ab", "172.20.0.1", (("172.20.0.1", 9),)),
        )
        self.assertIn(ip_network("169.254.0.0/16"), rules.denied)
        # and the networks this host's interfaces are on (a public LAN, its router)
        attached = attached_networks()
        self.assertTrue(attached)
        for network in attached:
            for end in (network[0], network[-1]):
                self.assertTrue(any(end in denied for denied in rules.denied), network)


class QuotaDecisionTests(SynchronousTestCase):
    def _backend(self, url: str | None = None, sizes: Any = None, refusal: Any = None) -> Any:
        from cli_server.sandboxes.disk_quota import DiskQuotas, DiskSizes

        settings = DockerSettings(
            url,
            "image",
            "http://host.docker.internal:8080/proxy/anthropic/v1",
            disks=sizes if sizes is not None else DiskSizes(64 * 1024**2, 64 * 1024**2),
            disk_root=Path("/nonexistent/docker-disks"),
        )
        return DockerBackend(
            synchronous_runner,
            settings,
            "i",
            OpencodeClient(MemoryReactorClock()),
            quotas=DiskQuotas(lambda argv, timeout: self.fail(f"ran {argv}")),
            quota_refusal=refusal or (lambda: None),
        )

    def test_when_volumes_get_quotas(self) -> None:
        """Quotas apply with a local engine (its socket) where the host can loop-mount; a
        remote engine, sizes turned off or a host without loop devices get none, and the
        reason is kept for the start-up warning."""
        from cli_server.sandboxes.disk_quota import DiskSizes

        self.assertIsNone(self._backend().quota_refused())
        self.assertIsNone(self._backend("unix:///run/docker.sock").quota_refused())
        self.assertIn("not on this host", self._backend("tcp://10.0.0.5:2376").quota_refused())
        self.assertIn("turned off", self._backend(sizes=DiskSizes(0, 0)).quota_refused())
        refused = self._backend(refusal=lambda: "needs root")
        self.assertEqual(refused.quota_refused(), "needs root")
