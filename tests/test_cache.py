import asyncio

import pytest

from identity.cache import BoundedMemoryCache, IdentityCache, make_backend


async def test_memory_cache_is_bounded_and_evicts_least_recently_used():
    cache = BoundedMemoryCache(max_entries=3)
    for key in "abc":
        await cache.set(key, key.upper())
    assert await cache.get("a") == "A"  # a is now the most recently used
    await cache.set("d", "D")
    assert len(cache) == 3
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in "acd"] == ["A", "C", "D"]


async def test_memory_cache_entries_expire_after_their_ttl():
    cache = BoundedMemoryCache(max_entries=10)
    await cache.set("k", "v", ttl=0.05)
    assert await cache.get("k") == "v"
    await asyncio.sleep(0.08)
    assert await cache.get("k") is None
    assert len(cache) == 0


async def test_compare_and_set_only_writes_over_the_expected_value():
    cache = BoundedMemoryCache(max_entries=10)
    await cache.set("k", "token")
    assert not await cache.set("k", "v", _cas_token="other")
    assert await cache.set("k", "v", _cas_token="token")
    assert await cache.get("k") == "v"


async def test_identity_cache_uses_the_configured_ttl():
    cache = IdentityCache(BoundedMemoryCache(max_entries=10), ttl=0.05)

    async def load() -> str:
        return "usr_abcdefghijklmnopqrstuv"

    await cache.fill("f", "alice@x.co", load)
    assert await cache.get("f", "alice@x.co") == "usr_abcdefghijklmnopqrstuv"
    await asyncio.sleep(0.08)
    assert await cache.get("f", "alice@x.co") is None


def test_unknown_cache_urls_are_refused_by_name():
    with pytest.raises(ValueError, match="memcached://x"):
        make_backend("memcached://x", max_entries=1)


async def test_a_change_is_reported_committed_even_when_the_cache_fails(identity, formation,
                                                                        monkeypatch):
    user = await identity.resolve(formation, "alice@x.co")

    async def timed_out(*args, **kwargs):
        raise TimeoutError("redis did not answer")

    monkeypatch.setattr(identity.cache, "invalidate", timed_out)
    result = await identity.associate(formation, ["alice@x.co", "tg_42"], user)
    assert result.user_id == user  # no error: the link has committed
    assert await identity.store.lookup(formation, "tg_42") == user
