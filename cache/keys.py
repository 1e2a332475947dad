"""The Redis key layout, in one place.

Every key is ``<prefix>{<tag>}:<name>``. The hash tag ``{u:42}`` (one user), ``{g:7}``
(one group), ``{r:3}`` (one reel) or ``{p:5}`` (one post) puts every key an operation
touches in one Redis Cluster slot, so multi-key scripts and pipelines stay legal on a
cluster. A key format is permanent once data
exists: ``tests/unit/test_cache_keys.py`` pins the formats.
"""

from __future__ import annotations

from dataclasses import dataclass


def user_tag(user_id: int) -> str:
    return f"u:{user_id}"


def group_tag(group_id: int) -> str:
    return f"g:{group_id}"


def reel_tag(reel_id: int) -> str:
    return f"r:{reel_id}"


def post_tag(post_id: int) -> str:
    return f"p:{post_id}"


GLOBAL_TAG = "global"


@dataclass(frozen=True)
class Scope:
    """A unit of cache state that shares one version: e.g. user 42's read state in group 7.

    ``tag`` picks the slot, ``name`` the state within it. Its version's truth is the
    Postgres row ``cache_versions.name == scope.row_name``.
    """

    tag: str
    name: str

    @property
    def row_name(self) -> str:
        return f"{self.tag}|{self.name}"

    @classmethod
    def from_row_name(cls, row_name: str) -> Scope:
        tag, _, name = row_name.partition("|")
        return cls(tag, name)


class Keyspace:
    """Builds keys under one prefix (tests give each test its own prefix)."""

    def __init__(self, prefix: str = "hc:") -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("a key prefix must not contain braces (they pick the cluster slot)")
        self.prefix = prefix

    def key(self, tag: str, *parts: object) -> str:
        return f"{self.prefix}{{{tag}}}:" + ":".join(str(p) for p in parts)

    def version(self, scope: Scope) -> str:
        return self.key(scope.tag, "v", scope.name)

    def lease(self, key: str) -> str:
        # Same slot as the key it guards: the tag is the key's first {...}.
        return f"{key}:lease"

    def temp(self, key: str, token: str) -> str:
        return f"{key}:tmp:{token}"

    def pattern(self) -> str:
        """A SCAN match pattern for every key of this keyspace."""
        return f"{self.prefix}*"
