"""One writer per dataset: the lease (taking, refusing, waiting, heartbeat, takeover after expiry)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from audiotok.transforms import lease, storage


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_second_run_is_refused_with_who_holds_it(tmp_path):
    out = str(tmp_path / "out")
    first = lease.Lease(out, command="tokenize").acquire()
    with pytest.raises(lease.LeaseHeld, match=r"being written by another run .*tokenize.*--wait-for-lock"):
        lease.Lease(out).acquire()
    first.release()
    assert not (tmp_path / "out" / lease.LEASE_NAME).exists()
    lease.Lease(out).acquire().release()


def test_waiting_for_the_lease(tmp_path):
    out = str(tmp_path / "out")
    first = lease.Lease(out).acquire()
    threading.Timer(0.5, first.release).start()
    start = time.monotonic()
    second = lease.Lease(out).acquire(wait_s=20)
    assert 0.4 < time.monotonic() - start < 15
    lease.check_owner(out, second.owner)
    second.release()


def test_an_expired_lease_is_taken_over_and_its_holder_cannot_publish(tmp_path):
    out = str(tmp_path / "out")
    clock = Clock()
    stalled = lease.Lease(out, ttl_s=60, clock=clock, held_by="job").acquire()
    clock.now += 30
    with pytest.raises(lease.LeaseHeld, match="expires in 30 s"):
        lease.Lease(out, clock=clock).acquire()
    clock.now += 31
    taker = lease.Lease(out, clock=clock).acquire()
    with pytest.raises(lease.LeaseLost):
        lease.check_owner(out, stalled.owner)
    with pytest.raises(lease.LeaseLost, match="taken over"):
        stalled.renew()
    stalled.release()  # not its lease any more: left alone
    lease.check_owner(out, taker.owner)
    taker.release()
    assert lease.read_holder(out) is None


def test_the_heartbeat_keeps_a_lease_alive(tmp_path):
    out = str(tmp_path / "out")
    held = lease.Lease(out, ttl_s=0.6).acquire().start_heartbeat()
    time.sleep(1.5)  # more than two lifetimes: only renewals keep it
    with pytest.raises(lease.LeaseHeld):
        lease.Lease(out, ttl_s=0.6).acquire()
    held.release()


def test_a_killed_holder_on_this_machine_is_taken_over_at_once(tmp_path):
    out = str(tmp_path / "out")
    code = ("import sys, os; from audiotok.transforms import lease; "
            f"lease.Lease({out!r}, ttl_s=3600).acquire(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    holder = lease.read_holder(out)
    assert holder is not None and holder.holder_is_gone()
    taker = lease.Lease(out).acquire()  # no hour-long wait: its process is gone
    lease.check_owner(out, taker.owner)
    taker.release()


def test_two_runs_racing_for_a_stale_lease_get_one_owner(tmp_path):
    out = str(tmp_path / "out")
    clock = Clock()
    lease.Lease(out, ttl_s=1, clock=clock, held_by="job").acquire()
    clock.now += 10
    winners, errors = [], []

    def take():
        try:
            winners.append(lease.Lease(out, clock=clock).acquire())
        except lease.LeaseHeld as e:
            errors.append(e)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(errors) == 5
    lease.check_owner(out, winners[0].owner)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [lease.LEASE_NAME]


def test_a_foreign_file_in_the_lease_place_is_not_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / lease.LEASE_NAME).write_text(json.dumps({"something": "else"}))
    with pytest.raises(lease.LeaseHeld, match="not an audiotok lease"):
        lease.Lease(str(out)).acquire()
    assert json.loads((out / lease.LEASE_NAME).read_text()) == {"something": "else"}


def test_lease_on_an_object_store_path():
    out = "memory://audiotok-lease/out"
    first = lease.Lease(out).acquire()
    with pytest.raises(lease.LeaseHeld):
        lease.Lease(out).acquire()
    first.release()
    assert not storage.exists(lease.lease_url(out))
