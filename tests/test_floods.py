"""A reply of very many small events costs CreateMessage about what it costs StreamMessage (linear in the
reply, not quadratic), and health keeps answering while it is read. With ``-s`` the tests print the gateway's
CPU for the 128k-delta reply on both RPCs and the slowest health check during the CreateMessage floods;
``python -m tests.floods`` prints the whole table."""

from __future__ import annotations

import asyncio

import pytest

from tests.floods import Flood, measure

FLOODS = [
    Flood("text", "text", 128_000, 4),  # the legitimate shape: CreateMessage took 4.4 times StreamMessage's CPU
    Flood("tool input", "tool", 100_000, 1),  # the tool input was re-parsed whole at every piece
]


@pytest.mark.parametrize("flood", FLOODS, ids=[f.name for f in FLOODS])
def test_create_message_costs_about_what_stream_message_costs_on_a_reply_of_many_deltas(flood: Flood) -> None:
    """The same reply through both RPCs: CreateMessage's CPU is within 1.5 times StreamMessage's (plus 0.3 s
    of slack for a busy machine; it was 4.6 times on the text, 5.8 on the tool input), both end OK, and while
    any one health check waited the gateway spent less than a quarter second of CPU (30-130 ms here): its event
    loop answers between slices of the flood. The wait is counted in the gateway's CPU, not on the clock, which
    on a loaded machine also counts the time the gateway was not running at all (0.4-1.5 s with two busy loops
    and three other test processes beside it)."""
    stream = asyncio.run(measure(flood, "StreamMessage"))
    create = asyncio.run(measure(flood, "CreateMessage"))
    print(
        f"{flood.count} {flood.name} deltas of {flood.size}: gateway CPU StreamMessage {stream.cpu:.2f} s, "
        f"CreateMessage {create.cpu:.2f} s; slowest health check {stream.slowest_health * 1e3:.0f} / "
        f"{create.slowest_health * 1e3:.0f} ms (idle {stream.idle_health * 1e3:.0f} / "
        f"{create.idle_health * 1e3:.0f} ms), the gateway's CPU meanwhile {stream.health_cpu * 1e3:.0f} / "
        f"{create.health_cpu * 1e3:.0f} ms"
    )
    assert (stream.status, create.status) == ("OK", "OK")
    assert create.cpu < 1.5 * stream.cpu + 0.3
    for outcome in (stream, create):
        assert outcome.health_cpu < 0.25, outcome


HEALTH_FLOODS = [
    Flood("text", "text", 100_000, 1),  # health waited 1 s while CreateMessage read it
]


@pytest.mark.parametrize("flood", HEALTH_FLOODS, ids=[f.name for f in HEALTH_FLOODS])
def test_health_answers_while_create_message_reads_a_flood(flood: Flood) -> None:
    """The floods of the hardening round's finding 4 through CreateMessage: the call ends OK and while any one
    health check waited the gateway spent less than a quarter second of CPU (it waited 1 s on the clock before)."""
    outcome = asyncio.run(measure(flood, "CreateMessage"))
    print(
        f"CreateMessage, {flood.count} {flood.name} deltas of {flood.size}: gateway CPU {outcome.cpu:.2f} s, "
        f"slowest health check {outcome.slowest_health * 1e3:.0f} ms (idle {outcome.idle_health * 1e3:.0f} ms, "
        f"the gateway's CPU meanwhile {outcome.health_cpu * 1e3:.0f} ms), {outcome.status}"
    )
    assert outcome.status == "OK"
    assert outcome.health_cpu < 0.25, outcome
