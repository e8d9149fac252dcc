"""Console sessions on every store the broker runs on: memory, Redis, Sentinel, Redis Cluster.

A session created by one broker process is found by another on the same store (a login on one
replica holds on the next), and ends for both at logout.
"""

from __future__ import annotations

from broker.console.sessions import Sessions
from broker.settings import Settings, StoreSettings


async def test_a_login_holds_on_another_process_until_logout(
    store_settings: StoreSettings,
) -> None:
    settings = Settings(store=store_settings)
    one = Sessions.for_settings(settings)
    # The memory store serves one process: there, the "other" process is the same one.
    shared = store_settings.backend == "redis"
    other = Sessions.for_settings(settings) if shared else one
    try:
        opened = await one.create()
        seen = await other.get(opened.session_id)
        assert seen is not None and seen.csrf == opened.session.csrf
        await other.drop(opened.session_id)  # logout on the other replica
        assert await one.get(opened.session_id) is None
        assert await one.get("not-a-session") is None
    finally:
        await one.close()
        if shared:
            await other.close()
