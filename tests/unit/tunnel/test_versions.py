"""What a connected agent runs (tunnel/versions.py): its release read from the hello, and the
one-sentence warning when it is older than this server."""

from __future__ import annotations

import pytest

from cli_server._version import __version__
from cli_server.tunnel.frames import VERSION
from cli_server.tunnel.versions import agent_json, agent_release, outdated


@pytest.mark.parametrize(
    ("name", "release"),
    [
        ("cli-agent/26.11.0", "26.11.0"),
        ("cli-agent/26.11.0.dev0", "26.11.0.dev0"),
        ("cli-agent/26.11.0rc1", "26.11.0rc1"),
        ("cli-agent/26.11", None),  # not three numbers
        ("cli-agent 26.11.0", None),  # not the agent's form
        ("curl/8.0.0", None),
        ("cli-agent/26.11.0 extra", None),
        ("", None),
    ],
)
def test_agent_release(name: str, release: str | None) -> None:
    """Only a hello of the form cli-agent/MAJOR.MINOR.MICRO… names a release."""
    assert agent_release(name) == release


def test_same_release_and_protocol_is_not_outdated() -> None:
    assert outdated("cli-agent/26.11.0", 2, current_protocol=2, server_release="26.11.0") is None
    assert outdated("cli-agent/26.11.0.dev0", 2, 2, "26.11.0") is None  # (same three numbers)


def test_a_newer_agent_is_not_outdated() -> None:
    assert outdated("cli-agent/27.1.0", 2, 2, "26.11.0") is None
    assert outdated("cli-agent/26.11.10", 2, 2, "26.11.9") is None  # numbers, not text


def test_an_older_release_says_to_upgrade() -> None:
    warning = outdated("cli-agent/26.9.3", 2, 2, "26.11.0")
    assert warning == (
        "this agent is cli-server 26.9.3, older than this server's 26.11.0: "
        "upgrade cli-server on its machine"
    )


def test_an_older_protocol_comes_first() -> None:
    """An older protocol is the graver news (a later server may refuse it), whatever the
    release says."""
    warning = outdated("cli-agent/27.1.0", 1, 2, "26.11.0")
    assert warning is not None
    assert warning.startswith("this agent speaks tunnel protocol 1, older than this server's 2")
    assert "may refuse it" in warning


def test_an_agent_that_names_no_release_is_judged_by_its_protocol() -> None:
    assert outdated("some-other-client", 2, 2, "26.11.0") is None
    assert outdated("some-other-client", 1, 2, "26.11.0") is not None


def test_defaults_are_this_server() -> None:
    """Without the optional arguments an agent of this very build is current."""
    this_build = f"cli-agent/{__version__.public()}"
    assert outdated(this_build, VERSION) is None


def test_agent_json() -> None:
    """What the API shows about a connected agent."""
    assert agent_json("cli-agent/26.9.3", 1, current_protocol=2) == {
        "version": "26.9.3",
        "protocol": 1,
        "warning": outdated("cli-agent/26.9.3", 1, 2),
    }
    assert agent_json("other", VERSION) == {"version": None, "protocol": VERSION, "warning": None}
