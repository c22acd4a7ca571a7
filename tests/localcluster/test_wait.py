"""`k80s.localcluster.wait`: timeouts that say what was awaited and what was seen."""

from __future__ import annotations

import pytest

from k80s.localcluster.wait import WaitTimeout, wait_for


def test_wait_for_returns_the_first_truthy_result() -> None:
    answers = iter([None, 0, "", {"ready": True}])
    assert wait_for(lambda: next(answers), what="readiness", timeout_s=5, interval_s=0.01) == {"ready": True}


def test_timeout_names_what_was_awaited_and_the_last_state() -> None:
    with pytest.raises(WaitTimeout) as raised:
        wait_for(lambda: None, what="pod ns/p to be Running", timeout_s=0.05, interval_s=0.01,
                 state=lambda: "phase=Pending node=-")
    assert str(raised.value) == "timed out after 0 s waiting for pod ns/p to be Running; last seen: phase=Pending node=-"
    assert isinstance(raised.value, TimeoutError)


def test_exceptions_are_retried_and_reported() -> None:
    def check() -> None:
        raise LookupError("no such pod")

    with pytest.raises(WaitTimeout, match="last seen: LookupError: no such pod"):
        wait_for(check, what="a pod", timeout_s=0.05, interval_s=0.01)
