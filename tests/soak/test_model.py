"""The soak's book (:mod:`tests.soak.model`): how it grades changes that race a login
or a logout, and what its checks count. No server: the soak's verdicts are only
as good as these rules."""

from __future__ import annotations

from .model import ABSENT, Entry, Grade, Lineage, Tally


def login(tally: Tally, lineage: Lineage) -> Lineage:
    """A login that loaded the session at t=10 and called regenerate() at t=20."""
    successor = tally.end(lineage, "regenerate", 10.0, 20.0, "new-cookie")
    assert successor is not None
    return successor


def test_a_login_grades_the_changes_by_when_they_were_saved() -> None:
    tally = Tally()
    old = Lineage("old")
    tally.place(old, Entry("before", "1", 5.0))
    tally.place(old, Entry("window", "2", 15.0))
    tally.place(old, Entry("after", "3", 25.0))
    new = login(tally, old)

    assert new.entries["before"].grade is Grade.STRICT
    assert new.entries["window"].grade is Grade.WINDOW
    assert "after" not in new.entries
    assert "after" in new.doubtful
    assert tally.unchecked["replaced"] == 1


def test_a_change_answered_after_the_login_is_booked_in_the_new_session() -> None:
    tally = Tally()
    old = Lineage("old")
    new = login(tally, old)
    tally.place(old, Entry("late-but-early", "1", 5.0))
    tally.place(old, Entry("late-and-late", "2", 30.0))

    assert new.entries["late-but-early"].grade is Grade.STRICT
    assert "late-and-late" in new.doubtful
    assert old.entries == {}


def test_a_logout_drops_every_change() -> None:
    tally = Tally()
    old = Lineage("old")
    tally.place(old, Entry("a", "1", 5.0))
    assert tally.end(old, "destroy", 10.0, 10.0, None) is None
    tally.place(old, Entry("b", "2", 1.0))

    assert old.entries == {}
    assert tally.unchecked["destroyed"] == 2


def test_check_counts_each_lost_or_resurrected_key_once() -> None:
    tally = Tally()
    session = Lineage("s")
    tally.place(session, Entry("kept", "1", 1.0))
    tally.place(session, Entry("lost", "2", 1.0))
    tally.place(session, Entry("deleted", ABSENT, 1.0))
    data = {"kept": "1", "deleted": "x"}

    for _ in range(3):
        tally.check("read", "s", data, session.entries)

    assert tally.violations.counts == {"lost_writes": 1, "resurrected_keys": 1}


def test_window_changes_are_counted_apart() -> None:
    tally = Tally()
    old = Lineage("old")
    tally.place(old, Entry("window", "2", 15.0))
    new = login(tally, old)

    tally.check("read", new.cookie, {}, new.entries)

    assert tally.violations.counts == {"window_lost_writes": 1}


def test_only_the_final_check_flags_keys_the_book_does_not_know() -> None:
    tally = Tally()
    session = Lineage("s")
    session.doubtful.add("maybe")
    data = {"maybe": "1", "stray": "2"}

    tally.check("read", "s", data, session.entries)
    assert not tally.violations.counts
    tally.check("final", "s", data, session.entries, doubtful=session.doubtful)
    assert tally.violations.counts == {"unexpected_keys": 1}


def test_a_delete_sent_before_two_logins_still_excuses_the_key() -> None:
    """Found in CI: a delete sent on a session, still running (a stalled worker
    thread) when two logins in a row replaced the session, removed its key. The
    key must not be expected by reads of the session after the second login."""
    tally = Tally()
    first = Lineage("first")
    tally.place(first, Entry("w1", "v1", 1.0))
    first.deleting.add("w1")
    first.delete_sent.add("w1")
    second = login(tally, first)
    third = tally.end(second, "regenerate", 30.0, 40.0, "third-cookie")
    assert third is not None
    assert "w1" in third.entries  # still booked: the delete has not answered
    assert "w1" in third.delete_sent  # so a read does not expect it
