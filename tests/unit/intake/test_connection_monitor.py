"""The watchdog's view of the Bayeux exchanges."""

from __future__ import annotations

from sf_bridge.intake.streaming import ConnectionMonitor

CHANNEL = "/data/OpportunityChangeEvent"


async def test_one_refused_connect_is_tolerated_two_in_a_row_are_trouble():
    now = [0.0]
    monitor = ConnectionMonitor(CHANNEL, clock=lambda: now[0])
    await monitor.incoming([{"channel": "/meta/connect", "successful": False, "error": "401::x"}])
    assert not monitor.trouble.is_set()  # the transport logs in again and resends by itself
    await monitor.incoming([{"channel": "/meta/connect", "successful": True}])
    await monitor.incoming(
        [{"channel": "/meta/connect", "successful": False, "error": "403::Unknown client"}]
    )
    assert not monitor.trouble.is_set()
    await monitor.incoming(
        [{"channel": "/meta/connect", "successful": False, "error": "403::Unknown client"}]
    )
    assert monitor.trouble.is_set()
    assert monitor.last_error == "403::Unknown client"
    monitor.reset()
    assert not monitor.trouble.is_set()


async def test_refused_subscription_of_our_channel_is_trouble():
    monitor = ConnectionMonitor(CHANNEL)
    await monitor.incoming(
        [{"channel": "/meta/subscribe", "successful": False, "subscription": "/topic/Other"}]
    )
    assert not monitor.trouble.is_set()
    error = "400::The replayId {5} you provided was invalid."
    await monitor.incoming(
        [
            {
                "channel": "/meta/subscribe",
                "successful": False,
                "subscription": CHANNEL,
                "error": error,
            }
        ]
    )
    assert monitor.trouble.is_set()
    assert monitor.subscription_error == error


async def test_silence_is_measured_from_the_last_payload():
    now = [10.0]
    monitor = ConnectionMonitor(CHANNEL, clock=lambda: now[0])
    now[0] = 25.0
    assert monitor.silent_for() == 15.0
    await monitor.incoming([{"channel": CHANNEL, "data": {}}])
    now[0] = 26.0
    assert monitor.silent_for() == 1.0
