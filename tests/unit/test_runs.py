"""One-off runs: the attach frames (framework and CLI copies agree), the run record and its
checks, and the planner's rules for runs (launched once, never replaced or killed)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from berth.cli import attachwire as wire
from berth.framework import attach
from berth.framework.errors import Invalid
from berth.framework.model import Task
from berth.framework.plan import Desired, Offer, PendingRun, Resources, plan
from berth.framework.runs import Run, validate_command, validate_size

SMALL = Resources(cpus=0.25, mem=256.0)


# -- frames ------------------------------------------------------------------------------------


def test_frames_round_trip_and_the_cli_copy_speaks_the_same_bytes() -> None:
    assert (attach.STDIN, attach.STDOUT, attach.STDERR, attach.STDIN_EOF) == (0, 1, 2, 3)
    for name in ("STDIN", "STDOUT", "STDERR", "STDIN_EOF", "RESIZE", "SIGNAL", "EXIT", "ERROR"):
        assert getattr(wire, name) == getattr(attach, name), name
    assert wire.MAX_FRAME == attach.MAX_FRAME
    payload = b"x" * (attach.MAX_FRAME * 2 + 5)
    assert wire.data(wire.STDIN, payload) == attach.data(attach.STDIN, payload)
    frames = [attach.decode(m) for m in attach.data(attach.STDOUT, payload)]
    assert [len(f.data) for f in frames] == [attach.MAX_FRAME, attach.MAX_FRAME, 5]
    assert b"".join(f.data for f in frames) == payload
    assert wire.control(wire.RESIZE, {"cols": 80, "rows": 24}) == attach.resize_frame(80, 24)
    assert wire.control(wire.SIGNAL, text="INT") == attach.signal_frame("INT")
    assert wire.split(attach.exit_frame(42)) == (wire.EXIT, b'{"code": 42}')
    assert wire.json_of(wire.split(attach.exit_frame(3, "boom"))[1]) == {"code": 3, "error": "boom"}


def test_control_frames_are_checked() -> None:
    assert attach.size_of(attach.decode(attach.resize_frame(120, 40))) == (120, 40)
    assert attach.signal_of(attach.decode(attach.signal_frame("TERM"))) == "TERM"
    assert attach.exit_of(attach.decode(attach.exit_frame(0))) == (0, "")
    for bad in (b"", b"\x09abc"):
        with pytest.raises(attach.BadFrame):
            attach.decode(bad)
    for payload in (b"not json", b'{"cols": 0, "rows": 5}', b"[1]", b'{"cols": true, "rows": 5}'):
        with pytest.raises(attach.BadFrame):
            attach.size_of(attach.Frame(attach.RESIZE, payload))
    with pytest.raises(attach.BadFrame):
        attach.signal_of(attach.decode(attach.signal_frame("KILL")))
    with pytest.raises(attach.BadFrame):
        attach.decode("text is not a frame")
    with pytest.raises(attach.BadFrame):
        attach.decode(b"\x00" + b"x" * (attach.MAX_FRAME + 1))
    assert wire.split("text") == (-1, b"")


# -- the record and its checks -------------------------------------------------------------------


def test_commands_are_argv_lists_with_limits() -> None:
    assert validate_command(["sh", "-c", "echo 'a b' \"c\""]) == ("sh", "-c", "echo 'a b' \"c\"")
    for bad in ([], "sh -c true", [""], ["sh", 3], ["a\x00b"], ["x"] * 257, ["x" * 70000]):
        with pytest.raises(Invalid):
            validate_command(bad)


def test_sizes_default_and_are_checked_like_limits() -> None:
    assert validate_size(None) == (256, 0.25)
    assert validate_size({"memory": "1g", "cpu": 2}) == (1024, 2.0)
    for bad in ({"memory": "lots"}, {"cpu": "many"}, {"disk": 1}, "512m"):
        with pytest.raises(Invalid):
            validate_size(bad)


def test_a_run_record_round_trips_and_shows_no_secret() -> None:
    run = Run("shop", 7, ("sh", "-c", "x"), 3, True, False, 256, 0.25, "me", "t", "v1:k:sealed")
    assert Run.from_json(run.to_json()) == run
    shown = run.public_json()
    assert "secret" not in shown
    assert shown["name"] == "run.7"


# -- planning ------------------------------------------------------------------------------------


def offer(n: int = 1) -> Offer:
    return Offer(f"o{n}", f"a{n}", f"host{n}", Resources(4.0, 4096.0, 1000.0), ((31000, 31009),))


def desired(*runs: PendingRun, **formation: int) -> Desired:
    return Desired("shop", 3, formation, dict.fromkeys(formation, SMALL), runs=runs)


def run_task(number: int, state: str = "running", app: str = "shop") -> Task:
    return Task(f"{app}.run.{number}.v2.abcd", app, "run", number, 2, state, agent_id="a1")


def test_a_pending_run_is_launched_once_from_its_own_release() -> None:
    decided = plan([desired(PendingRun(4, 2, SMALL))], [], [offer()], {}, 0.0)
    (launch,) = decided.launches
    assert (launch.app, launch.process, launch.index, launch.release) == ("shop", "run", 4, 2)
    assert launch.resources == SMALL
    # once its task exists (even if the record still says pending) it is not launched again
    again = plan([desired(PendingRun(4, 2, SMALL))], [run_task(4, "staging")], [offer()], {}, 0.0)
    assert again.launches == []
    assert again.kills == []


def test_run_tasks_are_never_counted_killed_or_replaced_by_the_formation() -> None:
    tasks = [run_task(1), run_task(2, "failed"), replace(run_task(3), release=1)]
    decided = plan([desired(web=0)], tasks, [offer()], {}, 0.0)
    assert decided.kills == []
    assert decided.launches == []
    # a formation type called `run` never launches or kills one-off runs either
    decided = plan([desired(run=2)], tasks, [offer()], {}, 0.0)
    assert decided.kills == []
    assert decided.launches == []


def test_runs_of_a_destroyed_app_are_killed() -> None:
    decided = plan([], [run_task(1, app="gone")], [], {}, 0.0)
    assert decided.kills == ["gone.run.1.v2.abcd"]


def test_a_run_waits_for_an_offer_with_room() -> None:
    big = PendingRun(1, 2, Resources(cpus=8.0, mem=256.0))
    decided = plan([desired(big)], [], [offer()], {}, 0.0)
    assert decided.launches == []
    assert decided.unplaced == 1
    assert decided.wants_offers


# -- the rendezvous's bookkeeping ----------------------------------------------------------------


def test_a_run_is_attached_once_while_its_other_side_is_there() -> None:
    from berth.api.routes_runs import Rendezvous
    from berth.framework.errors import Conflict

    meetings = Rendezvous()
    key = ("shop", 1)
    meetings.claim(key, "client")
    with pytest.raises(Conflict):
        meetings.claim(key, "client")
    meeting = meetings.arrive(key, "client", "client-ws")
    assert not meeting.met.is_set()
    meetings.claim(key, "executor")
    assert meetings.arrive(key, "executor", "executor-ws") is meeting
    assert meeting.met.is_set()
    meetings.leave(key, "client")
    with pytest.raises(Conflict):  # the executor is still there: nobody takes the client's place
        meetings.claim(key, "client")
    meetings.leave(key, "executor")
    assert len(meetings) == 0
    # a client that gave up before its run started may come back
    meetings.claim(("shop", 2), "client")
    meetings.leave(("shop", 2), "client")
    meetings.claim(("shop", 2), "client")
