"""What the upstream says, made safe: secrets masked, messages bounded, request ids checked, logs filtered."""

from __future__ import annotations

import io
import logging

import grpc
import pytest

from server.errors import Failure
from server.redaction import MASK, LogRedaction, Redactor, request_id
from tests.harness import API_KEY

TOKEN = "gw-caller-token-123456"


@pytest.mark.parametrize(
    ("value", "passed"),
    [
        ("req_011CSHoEeqs5C35K2UUqR7Fy", True),
        ("req_sim00000000000000001", True),
        ("req_", False),
        ("request-1", False),
        ("req_" + "a" * 121, False),
        ("req_abc\r\nx-injected: 1", False),
        ("req_abc def", False),
        (None, False),
        (42, False),
    ],
)
def test_request_ids_pass_only_when_they_look_like_one(value: object, passed: bool) -> None:
    """`req_` and up to 120 of [A-Za-z0-9_-]; anything else is dropped."""
    assert request_id(value) == (value if passed else None)


def test_failures_lose_every_secret_and_keep_a_bounded_message() -> None:
    """The key and the caller token are masked, the message cut at 1,024 characters, a tainted id dropped."""
    redactor = Redactor((API_KEY, TOKEN, None, "short"))
    failure = Failure(
        grpc.StatusCode.UNAVAILABLE,
        "API_ERROR",
        f"upstream said {API_KEY} and Bearer {TOKEN} and short " + "x" * 5000,
        request_id=f"req_{API_KEY.replace('-', '_')}",
    )
    clean = redactor.failure(failure)
    assert API_KEY not in clean.message
    assert TOKEN not in clean.message
    assert clean.message.count(MASK) == 2
    assert "short" in clean.message  # too short to be a secret: ordinary words stay
    assert len(clean.message) < 1100
    tainted = Failure(grpc.StatusCode.UNAVAILABLE, "X", "m", request_id=f"req_{TOKEN}")
    assert redactor.failure(tainted).request_id is None


def test_log_filter_masks_secrets_in_messages_arguments_and_tracebacks() -> None:
    """A record carrying the key in its arguments or its exception's text is written without it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(LogRedaction(Redactor((API_KEY,))))
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("header was %s", f"Bearer {API_KEY}")
        try:
            raise ValueError(f"bad key {API_KEY}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert API_KEY not in text
    assert text.count(MASK) == 2
    assert "ValueError" in text


def test_the_scanner_finds_a_secret_cut_anywhere_across_reads() -> None:
    """A secret is found whole in a read, cut at any point across two reads, or spread over reads of one byte
    each (the carry is len(secret) - 1 bytes); reads that only resemble it are not flagged."""
    secret = b"sk-ant-api03-0123456789abcdef"
    reads = [b'data: {"text": "x ', secret, b' y"}\n\n']
    scanner = Redactor([secret.decode(), "another-secret-value"]).scanner()
    assert scanner.found(b"".join(reads))
    for cut in range(1, len(secret)):
        scanner = Redactor([secret.decode()]).scanner()
        assert not scanner.found(b"prefix " + secret[:cut])
        assert scanner.found(secret[cut:] + b" suffix"), cut
    scanner = Redactor([secret.decode()]).scanner()
    assert [scanner.found(bytes([b])) for b in b"..." + secret][-1]
    scanner = Redactor([secret.decode()]).scanner()
    assert not any(scanner.found(read) for read in (secret[:-1], b"!", secret[1:], b"sk-ant-api03-", b"x" * 100))


def test_holds_finds_a_secret_in_any_one_of_the_texts_and_nothing_across_them() -> None:
    """What Bedrock's decoded events are searched with: a secret whole in any one text is found; texts that only
    resemble it are not, and neither is a secret whose halves end one text and start the next (a caller gets
    each event on its own, so no event's text holds it)."""
    secret = "sk-ant-api03-0123456789abcdef"
    redactor = Redactor([secret, "another-secret-value"])
    assert redactor.holds(["x", f'{{"text":"x {secret} y"}}'])
    assert redactor.holds(iter(["another-secret-value"]))
    near = [secret[:-1], secret[1:], secret.upper(), "x" * 100]
    assert not redactor.holds(near)
    assert not redactor.holds([secret[:9], secret[9:]])
    assert not Redactor([]).holds([secret])
