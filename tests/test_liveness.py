"""Peer liveness state machine (DESIGN §4): births, deaths, heartbeats, silence, epochs. Pure."""

from __future__ import annotations

import pytest

from peerd import liveness
from peerd.liveness import OFFLINE, ONLINE, SUSPECT, UNKNOWN, Liveness, LivenessPolicy, PeerLife

HB = 15.0
MISSED = 3
TIMEOUT = 300.0


@pytest.fixture
def live() -> Liveness:
    return Liveness(heartbeat_interval=HB, missed=MISSED, peer_timeout=TIMEOUT)


def test_unheard_peer_is_unknown(live: Liveness) -> None:
    """A peer never heard of has status unknown and is not aged by tick."""
    assert live.status("ghost") == UNKNOWN
    assert live.tick(1e9) == []


def test_online_on_birth(live: Liveness) -> None:
    """A birth makes the peer online and reports the transition once."""
    assert live.on_birth("p", 1, 100.0) == ("p", UNKNOWN, ONLINE)
    assert live.status("p") == ONLINE
    assert live.on_birth("p", 1, 101.0) is None  # already online: no transition


def test_suspect_after_missed_heartbeats(live: Liveness) -> None:
    """Silence of just under ``missed`` intervals keeps a peer online; exactly that long makes it suspect."""
    live.on_birth("p", 1, 0.0)
    assert live.tick(MISSED * HB - 0.001) == []
    assert live.status("p") == ONLINE
    assert live.tick(MISSED * HB) == [("p", ONLINE, SUSPECT)]
    assert live.status("p") == SUSPECT
    assert live.tick(MISSED * HB + 1) == []  # no repeated transition


def test_heartbeat_keeps_online_and_revives_suspect(live: Liveness) -> None:
    """Heartbeats reset the silence clock, and a suspect peer heard again is online."""
    live.on_birth("p", 1, 0.0)
    live.on_heard("p", 1, 40.0)
    assert live.tick(40.0 + MISSED * HB - 1) == []
    assert live.tick(40.0 + MISSED * HB) == [("p", ONLINE, SUSPECT)]
    assert live.on_heard("p", 1, 100.0) == ("p", SUSPECT, ONLINE)


def test_offline_after_peer_timeout(live: Liveness) -> None:
    """Silence of ``peer_timeout`` makes a peer offline, from online or suspect."""
    live.on_birth("a", 1, 0.0)
    live.on_birth("b", 1, 0.0)
    live.tick(MISSED * HB)  # both suspect
    assert live.status("b") == SUSPECT
    assert sorted(live.tick(TIMEOUT)) == [("a", SUSPECT, OFFLINE), ("b", SUSPECT, OFFLINE)]
    live.on_birth("c", 1, 1000.0)
    assert live.tick(1000.0 + TIMEOUT) == [("c", ONLINE, OFFLINE)]  # straight past suspect


def test_offline_on_death(live: Liveness) -> None:
    """A death of the current epoch makes the peer offline at once."""
    live.on_birth("p", 2, 0.0)
    assert live.on_death("p", 2, 1.0) == ("p", ONLINE, OFFLINE)
    assert live.status("p") == OFFLINE
    assert live.tick(1e6) == []  # offline peers are not aged further


def test_death_of_older_epoch_is_ignored(live: Liveness) -> None:
    """A stale Will (death of an epoch older than the current birth) does not kill the peer."""
    live.on_birth("p", 5, 0.0)
    assert live.on_death("p", 4, 1.0) is None
    assert live.status("p") == ONLINE


def test_birth_of_older_epoch_is_ignored(live: Liveness) -> None:
    """A retained birth of an earlier life neither revives nor rewinds the epoch."""
    live.on_birth("p", 5, 0.0)
    live.on_death("p", 5, 1.0)
    assert live.on_birth("p", 4, 2.0) is None
    assert live.status("p") == OFFLINE
    assert live.peers["p"].epoch == 5


def test_heard_of_older_epoch_is_ignored(live: Liveness) -> None:
    """A late message of an old epoch neither revives a peer nor refreshes its last-seen time."""
    live.on_birth("p", 3, 10.0)
    live.on_death("p", 3, 11.0)
    assert live.on_heard("p", 2, 50.0) is None
    assert live.status("p") == OFFLINE
    live2 = Liveness(heartbeat_interval=HB, missed=MISSED, peer_timeout=TIMEOUT)
    live2.on_birth("q", 3, 0.0)
    assert live2.on_heard("q", 2, 40.0) is None
    assert live2.peers["q"].last_seen == 0.0
    assert live2.tick(MISSED * HB) == [("q", ONLINE, SUSPECT)]


def test_goodbye_is_final_for_its_epoch(live: Liveness) -> None:
    """After a death in epoch e, a late heartbeat of e does not revive the peer; a birth of e+1 does."""
    live.on_birth("p", 7, 0.0)
    live.on_death("p", 7, 1.0)
    assert live.on_heard("p", 7, 2.0) is None
    assert live.status("p") == OFFLINE
    assert live.on_birth("p", 8, 3.0) == ("p", OFFLINE, ONLINE)
    assert live.peers["p"].epoch == 8
    assert live.peers["p"].offline_since is None


def test_message_of_newer_epoch_revives(live: Liveness) -> None:
    """Any valid message of a newer life (its birth was missed) brings an offline peer back."""
    live.on_birth("p", 1, 0.0)
    live.on_death("p", 1, 1.0)
    assert live.on_heard("p", 2, 5.0) == ("p", OFFLINE, ONLINE)
    assert live.peers["p"].epoch == 2


def test_expired_after_ttl(live: Liveness) -> None:
    """``expired`` lists peers offline for at least ``ttl``, measured from when they went offline."""
    ttl = 7 * 86400.0
    live.on_birth("dead", 1, 0.0)
    live.on_death("dead", 1, 100.0)
    live.on_birth("alive", 1, 0.0)
    assert live.expired(100.0 + ttl - 1, ttl) == []
    assert live.expired(100.0 + ttl, ttl) == ["dead"]
    live.on_birth("dead", 2, 100.0 + ttl + 1)  # came back: no longer expired
    assert live.expired(100.0 + 10 * ttl, ttl) == []


def test_expired_counts_from_timeout(live: Liveness) -> None:
    """A peer that went offline by silence expires ``ttl`` after the tick that declared it offline."""
    live.on_birth("p", 1, 0.0)
    live.tick(TIMEOUT + 5)
    assert live.expired(TIMEOUT + 5 + 99, 100.0) == []
    assert live.expired(TIMEOUT + 5 + 100, 100.0) == ["p"]


def test_restore_keeps_stored_status(live: Liveness) -> None:
    """A restored offline peer expires from its stored time; a restored online one ages normally."""
    live.restore("off", status=OFFLINE, epoch=3, last_seen=50.0)
    live.restore("on", status=ONLINE, epoch=1, last_seen=0.0)
    assert live.expired(150.0, 100.0) == ["off"]
    assert live.on_death("off", 2, 151.0) is None  # older epoch than stored
    assert live.tick(MISSED * HB) == [("on", ONLINE, SUSPECT)]


def test_counts(live: Liveness) -> None:
    """``counts`` has one entry per status, summing to the number of known peers."""
    assert live.counts() == {ONLINE: 0, SUSPECT: 0, OFFLINE: 0, UNKNOWN: 0}
    live.on_birth("a", 1, 0.0)
    live.on_birth("b", 1, 0.0)
    live.on_birth("c", 1, 40.0)
    live.on_death("d", 1, 0.0)
    live.tick(MISSED * HB)  # a, b suspect; c still online
    live.on_heard("b", 1, MISSED * HB)
    assert live.counts() == {ONLINE: 2, SUSPECT: 1, OFFLINE: 1, UNKNOWN: 0}


# ------------------------------------------------------------------ the functions over one PeerLife

def test_functions_work_on_the_life_they_are_handed() -> None:
    """The node's registry entry holds a ``PeerLife``; the functions age it in place."""
    policy = LivenessPolicy(heartbeat_interval=HB, missed=MISSED, peer_timeout=TIMEOUT)
    life = PeerLife()
    assert liveness.on_silence(life, 1e9, policy) is None  # never heard: not aged
    assert liveness.on_birth(life, 2, 0.0) == (UNKNOWN, ONLINE)
    assert liveness.on_silence(life, MISSED * HB, policy) == (ONLINE, SUSPECT)
    assert liveness.on_silence(life, TIMEOUT, policy) == (SUSPECT, OFFLINE)
    assert life.offline_since == TIMEOUT
    assert not liveness.is_expired(life, TIMEOUT + 99.0, ttl=100.0)
    assert liveness.is_expired(life, TIMEOUT + 100.0, ttl=100.0)
    assert liveness.on_heard(life, 2, TIMEOUT + 1) is None  # offline in this epoch: a birth revives
    assert liveness.on_birth(life, 3, TIMEOUT + 2) == (OFFLINE, ONLINE)
    assert not liveness.is_expired(life, 1e9, ttl=100.0)  # online again: nothing to expire


def test_restored_offline_life_counts_its_offline_time_from_last_seen() -> None:
    life = liveness.restored(status=OFFLINE, epoch=4, last_seen=50.0)
    assert life.offline_since == 50.0 and liveness.is_expired(life, 150.0, ttl=100.0)
    assert liveness.count([life, PeerLife()]) == {ONLINE: 0, SUSPECT: 0, OFFLINE: 1, UNKNOWN: 1}
