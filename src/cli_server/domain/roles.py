"""Workspace roles and what each may do (DESIGN.md, Roles)."""

from __future__ import annotations

from enum import IntEnum


class Role(IntEnum):
    """Ordered so that ``role >= Role.DEVELOPER`` reads as "developer or more"."""

    GUEST = 1
    DEVELOPER = 2
    MAINTAINER = 3
    OWNER = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(text) from None


ROLE_NAMES = tuple(r.label for r in sorted(Role, reverse=True))
