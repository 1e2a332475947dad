"""Key formats are permanent once data exists: pin them."""

import pytest

from cache import group_feed as gf_cache
from cache import ranked_feed as rf
from cache.keys import Keyspace, Scope, group_tag, user_tag


def test_key_formats():
    ks = Keyspace("hc:")
    assert ks.key(user_tag(42), "reels") == "hc:{u:42}:reels"
    assert ks.key(group_tag(7), "live") == "hc:{g:7}:live"
    assert ks.version(Scope("u:42", "rs:7")) == "hc:{u:42}:v:rs:7"
    assert ks.lease("hc:{u:42}:reels") == "hc:{u:42}:reels:lease"
    assert gf_cache.groups_key(ks, 42) == "hc:{u:42}:groups"
    assert Scope("u:42", "rs:7").row_name == "u:42|rs:7"
    assert Scope.from_row_name("u:42|rs:7") == Scope("u:42", "rs:7")
    assert rf.rank_key(ks, 42) == "hc:{u:42}:rf:rank:v3"
    assert rf.rank_key(ks, 42, admin=True) == "hc:{u:42}:rf:rank:v3:a"
    assert rf.config_key(ks) == "hc:{rank}:config"
    assert ks.version(rf.config_scope()) == "hc:{rank}:v:config"
    assert rf.config_scope().row_name == "rank|config"


def test_prefix_cannot_pick_slot():
    with pytest.raises(ValueError):
        Keyspace("{x}:")


def test_user_keys_share_a_slot():
    from redis.crc import key_slot

    ks = Keyspace("hc:")
    keys = [ks.key(user_tag(42), p) for p in ("reels", "groups", "rs:1", "activity")]
    keys += [ks.version(Scope(user_tag(42), "reels")), ks.lease(keys[0])]
    assert len({key_slot(k.encode()) for k in keys}) == 1
