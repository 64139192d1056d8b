"""The server's instance id: what its docker objects' labels call it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_server.compose.backends import instance_id


def test_made_once_then_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = instance_id(data)
    assert len(first) == 16 and int(first, 16) >= 0
    assert instance_id(data) == first
    assert (data / "instance-id").read_text() == first + "\n"
    assert [p.name for p in data.iterdir()] == ["instance-id"]  # no draft left behind


def test_two_data_directories_get_different_ids(tmp_path: Path) -> None:
    assert instance_id(tmp_path / "a") != instance_id(tmp_path / "b")


def test_a_damaged_id_is_refused_rather_than_replaced(tmp_path: Path) -> None:
    (tmp_path / "instance-id").write_text("not an id\n")
    with pytest.raises(RuntimeError, match="16 hex digits"):
        instance_id(tmp_path)
    assert (tmp_path / "instance-id").read_text() == "not an id\n"


def test_a_dangling_link_in_its_place_is_an_error_not_a_loop(tmp_path: Path) -> None:
    (tmp_path / "instance-id").symlink_to(tmp_path / "nowhere")
    with pytest.raises((RuntimeError, OSError)):
        instance_id(tmp_path)


def test_a_data_directory_it_cannot_write_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RuntimeError, match="cannot write this server's instance id"):
        instance_id(blocker / "data")
