"""A failure's cause: what differs from job to job is folded, the exception's type and the words are kept."""

from __future__ import annotations

import pytest

from taskctl.causes import LONGEST, NO_ERROR, fold, matches


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        ("ConnectionRefusedError: [Errno 111] mail-3 refused", "ConnectionRefusedError: [Errno <n>] mail-<n> refused"),
        ("TimeoutError: order 4711 timed out after 5.0 s", "TimeoutError: order <n> timed out after <n> s"),
        ("RuntimeError: 10.0.0.7:25 closed", "RuntimeError: <n>:<n> closed"),
        ("smtplib.SMTPRecipientsRefused: {'bob@example.com': (550, b'no such user')}",
         "smtplib.SMTPRecipientsRefused: {'<email>': (<n>, b'no such user')}"),
        ("KeyError: 'order-3f0c9a8e1b2c4d5e6f708192a3b4c5d6'", "KeyError: 'order-<id>'"),
        ("LookupError: job 123e4567-e89b-12d3-a456-426614174000 gone", "LookupError: job <id> gone"),
        ("Moved to FailedJobRegistry, due to AbandonedJobError, at 2026-12-06 04:31:07.123456+00:00",
         "Moved to FailedJobRegistry, due to AbandonedJobError, at <time>"),
        ("Http404Error: utf8, http2, deadbeef stay", "Http404Error: utf8, http2, deadbeef stay"),
        ("", NO_ERROR),
    ],
)  # fmt: skip
def test_numbers_ids_addresses_and_times_fold_and_the_rest_stays(error: str, cause: str) -> None:
    assert fold(error) == cause


def test_messages_that_agree_in_their_first_part_are_one_cause() -> None:
    first, second = "ValueError: " + "x" * 300 + " 1", "ValueError: " + "x" * 300 + " 2"

    assert fold(first) == fold(second)
    assert len(fold(first)) == LONGEST and fold(first).endswith("…")


def test_a_cause_is_matched_by_type_words_or_as_listed_whatever_the_case() -> None:
    error = "ConnectionRefusedError: [Errno 111] mail-3 refused"
    for text in ("connectionrefusederror", "Mail-3 REFUSED", "[Errno <n>] mail-<n>"):
        assert matches(text, error, fold(error))
    assert not matches("TimeoutError", error, fold(error))
