"""What docker sandboxes may reach, written into the engine host's firewall.

Traffic from the sandboxes' bridge takes one of two paths on the host, and each gets a chain:

- to another machine or network (routed): ``FORWARD``, through the engine's ``DOCKER-USER``
  chain, which the engine never rewrites. Our ``…-FWD`` chain rejects the denied networks
  (private ranges, link-local and the metadata address…) unless allowed, so the internet
  stays reachable;
- to one of the host's own addresses (its LAN address, docker0, our bridge's gateway, any
  interface it has): ``INPUT``, which ``DOCKER-USER`` never sees. Our ``…-HOST`` chain accepts
  only the Anthropic door (the server's port on our gateway, or the address and port of
  ANTHROPIC_PROXY_URL), answers to connections the host opened (the engine's port forwarding
  to opencode), and allowed networks; it rejects the rest. The door passes ``…-FWD`` too, for
  a proxy URL on a private address elsewhere.

Both are jumped to with ``-i <our bridge>``, so nothing else on the host is touched. A chain
is replaced whole by one ``iptables-restore --noflush`` (no moment without rules), the jumps
are checked before they are added, and stale jumps (a bridge renamed) are deleted: applying
again is always safe. Rejecting rather than dropping makes a blocked connection fail at once.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from ipaddress import ip_network
from pathlib import Path

from attrs import frozen

from cli_server.plumbing.networks import Network

Run = Callable[..., "subprocess.CompletedProcess[str]"]

_TOOLS = {4: "iptables", 6: "ip6tables"}


def chain_prefix(instance: str) -> str:
    """Ours per server instance; short, as chain names are (≤ 28 characters)."""
    return "CLI-SBX-" + hashlib.sha256(instance.encode()).hexdigest()[:8]


def bridge_name(instance: str) -> str:
    """The bridge interface we ask the engine for (≤ 15 characters, as Linux requires)."""
    return "clisbx-" + hashlib.sha256(instance.encode()).hexdigest()[:8]


@frozen
class EgressRules:
    """The rules for one sandbox bridge. Pure: renders text, runs nothing."""

    prefix: str
    bridge: str
    gateway: str | None  # the bridge's IPv4 gateway (host.docker.internal in a sandbox)
    doors: tuple[tuple[str, int], ...]  # (address, TCP port) of the Anthropic proxy
    denied: tuple[Network, ...]
    allowed: tuple[Network, ...] = ()

    @property
    def forward_chain(self) -> str:
        return f"{self.prefix}-FWD"

    @property
    def host_chain(self) -> str:
        return f"{self.prefix}-HOST"

    def restore_text(self, family: int) -> str:
        """``iptables-restore --noflush`` input: declaring a chain empties it, so the whole
        chain is replaced in one commit."""
        ours = [n for n in self.allowed if n.version == family]
        denied = [n for n in self.denied if n.version == family]
        fwd, host = self.forward_chain, self.host_chain
        established = "-m conntrack --ctstate RELATED,ESTABLISHED"
        doors = [
            f"-d {ip_network(address)} -p tcp --dport {port}"
            for address, port in self.doors
            if ip_network(address).version == family
        ]
        lines = ["*filter", f":{fwd} - [0:0]", f":{host} - [0:0]"]
        lines.append(f"-A {fwd} {established} -j RETURN")
        lines += [f"-A {fwd} {door} -j RETURN" for door in doors]
        lines += [f"-A {fwd} -d {n} -j RETURN" for n in ours]
        lines += [f"-A {fwd} -d {n} -j REJECT" for n in denied]
        lines.append(f"-A {host} {established} -j ACCEPT")
        lines += [f"-A {host} {door} -j ACCEPT" for door in doors]
        lines += [f"-A {host} -d {n} -j ACCEPT" for n in ours]
        lines += [f"-A {host} -j REJECT", "COMMIT", ""]
        return "\n".join(lines)

    def jumps(self, forward_parent: str) -> list[tuple[str, list[str]]]:
        """(parent chain, rule) pairs that send our bridge's traffic to our chains."""
        return [
            (forward_parent, ["-i", self.bridge, "-j", self.forward_chain]),
            ("INPUT", ["-i", self.bridge, "-j", self.host_chain]),
        ]

    def operator_script(self) -> str:
        """The same rules as shell commands, for an operator whose server cannot apply them."""
        out = []
        for family, tool in _TOOLS.items():
            out.append(f"{tool}-restore --noflush <<'EOF'\n{self.restore_text(family)}EOF")
            # The engine keeps DOCKER-USER in IPv4 only, unless told to manage ip6tables.
            for parent, rule in self.jumps("DOCKER-USER" if family == 4 else "FORWARD"):
                spec = shlex.join(rule)
                out.append(f"{tool} -C {parent} {spec} 2>/dev/null || {tool} -I {parent} 1 {spec}")
        return "\n".join(out)


def cannot_apply(
    bridge: str,
    euid: Callable[[], int] = os.geteuid,
    which: Callable[[str], str | None] = shutil.which,
    sys_net: Path = Path("/sys/class/net"),
) -> str | None:
    """Why this process cannot write the rules itself, or None if it can."""
    if not (sys_net / bridge).exists():
        return f"the bridge {bridge} is not on this host (the engine runs elsewhere)"
    if euid() != 0:
        return "only root can change the host's firewall"
    missing = [t for t in (*_TOOLS.values(), "iptables-restore") if which(t) is None]
    if missing:
        return f"{', '.join(missing)} not found (apt-get install iptables)"
    return None


def apply(rules: EgressRules, run: Run = subprocess.run, timeout: float = 30.0) -> None:
    """Write the rules (blocking: call it on a thread). Raises RuntimeError with the tool's
    complaint if the firewall refuses them. ``-w``: wait for the lock the engine also takes."""
    for family, tool in _TOOLS.items():
        _call(run, [f"{tool}-restore", "-w", "--noflush"], timeout, rules.restore_text(family))
        parent = "DOCKER-USER" if _has_chain(run, tool, "DOCKER-USER", timeout) else "FORWARD"
        wanted = rules.jumps(parent)
        for chain, rule in wanted:
            checked = run([tool, "-w", "-C", chain, *rule], capture_output=True, timeout=timeout)
            if checked.returncode:
                _call(run, [tool, "-w", "-I", chain, "1", *rule], timeout)
        for chain in {parent, "INPUT"}:
            for rule in _stale_jumps(run, tool, chain, rules, wanted, timeout):
                _call(run, [tool, "-w", "-D", chain, *rule], timeout)


def remove(rules: EgressRules, run: Run = subprocess.run, timeout: float = 30.0) -> None:
    """Take every jump to our chains out, then the chains themselves."""
    for tool in _TOOLS.values():
        for chain in ("DOCKER-USER", "FORWARD", "INPUT"):
            if _has_chain(run, tool, chain, timeout):
                for rule in _stale_jumps(run, tool, chain, rules, [], timeout):
                    _call(run, [tool, "-w", "-D", chain, *rule], timeout)
        for ours in (rules.forward_chain, rules.host_chain):
            if _has_chain(run, tool, ours, timeout):
                _call(run, [tool, "-w", "-F", ours], timeout)
                _call(run, [tool, "-w", "-X", ours], timeout)


def _stale_jumps(
    run: Run,
    tool: str,
    chain: str,
    rules: EgressRules,
    wanted: Sequence[tuple[str, list[str]]],
    timeout: float,
) -> list[list[str]]:
    listed = _call(run, [tool, "-w", "-S", chain], timeout).splitlines()
    targets = {rules.forward_chain, rules.host_chain}
    keep = [rule for parent, rule in wanted if parent == chain]
    stale = []
    for line in listed:
        words = shlex.split(line)
        if words[:2] != ["-A", chain] or "-j" not in words:
            continue
        rule = words[2:]
        if rule[rule.index("-j") + 1] in targets and rule not in keep:
            stale.append(rule)
    return stale


def _has_chain(run: Run, tool: str, chain: str, timeout: float) -> bool:
    return run([tool, "-w", "-S", chain], capture_output=True, timeout=timeout).returncode == 0


def _call(run: Run, argv: list[str], timeout: float, stdin: str | None = None) -> str:
    done = run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        why = (done.stderr or "").strip().splitlines()
        raise RuntimeError(f"{argv[0]} refused our rules: {why[-1] if why else done.returncode}")
    return str(done.stdout)
