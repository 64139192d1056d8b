"""Usernames for accounts made by single sign-on: always of the local rule, best first."""

from __future__ import annotations

from itertools import islice

from cli_server.sso.claims import Claims
from cli_server.sso.identities import clean_username, username_candidates
from cli_server.web.auth_api import _USERNAME


def claims(
    username: str | None = None, email: str | None = None, name: str | None = None
) -> Claims:
    return Claims("oidc", "s", email, True, username, name)


def test_cleaning_follows_the_local_rule() -> None:
    assert clean_username("octo-cat") == "octo-cat"
    assert clean_username("Jürgen Müller") == "Jurgen-Muller"
    assert clean_username("__.-x") is None  # (nothing left that starts with a letter or digit)
    assert clean_username("ab") is None
    assert clean_username("a b!") == "a-b"
    assert clean_username("名前") is None
    assert clean_username("x" * 50) == "x" * 32
    assert clean_username("abc" + "-" * 40) == "abc"
    assert clean_username(None) is None
    for text in ["émile.zola@", " -lead", "o'neil", "a" * 31 + "-b", "1..2..3"]:
        cleaned = clean_username(text)
        assert cleaned is None or _USERNAME.match(cleaned), (text, cleaned)


def test_candidates_prefer_the_providers_name_then_email_then_display_name() -> None:
    assert next(username_candidates(claims("gh-login", "a@x.org", "Name"))) == "gh-login"
    assert next(username_candidates(claims("!!", "mail.box@x.org", "Name"))) == "mail.box"
    assert next(username_candidates(claims(None, None, "Ada Lovelace"))) == "Ada-Lovelace"
    assert next(username_candidates(claims())) == "user"


def test_suffixes_then_random_ones_all_fit_the_rule() -> None:
    names = list(islice(username_candidates(claims("y" * 32)), 60))
    assert names[:3] == ["y" * 32, "y" * 30 + "-2", "y" * 30 + "-3"]
    assert names[50] == "y" * 29 + "-51"
    assert len(set(names)) == 60
    assert all(_USERNAME.match(n) for n in names)
