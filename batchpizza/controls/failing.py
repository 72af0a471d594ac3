"""When a run should stop early because nothing it sends can succeed, with one clear message
instead of a failed row per prompt:

    invalid    the first FIRST_ROWS attempts of the run all got HTTP 400 or 422, with no answer
               among them: a parameter the server rejects (a wrong --param, a prompt format it
               does not take); every row would get the same
    down       every attempt for DOWN_FOR seconds (at least DOWN_ATTEMPTS of them) had its
               connection refused: the server is not there
    elsewhere  the first FIRST_ROWS attempts of the run all got a web page (HTML) where the
               API's JSON was due, or HTTP 404 or 405, with no answer among them: --base-url
               is not the API (or a login or challenge page answers for it); a page is retried,
               so without this every row spent all its attempts on it

A 400 or 422 is not retried, so FIRST_ROWS of them are as many distinct rows; other failures
(retried) neither count nor reset the counts. An answer ends the first watch for the rest of the
run and resets the second's stretch, as does any attempt that reached the server.
"""

from __future__ import annotations

import time

from batchpizza.controls.ratelimit import Clock
from batchpizza.errors import BadReply, ConnectionRefused, HTTPStatusError, ProviderError

FIRST_ROWS = 10
INVALID_STATUSES = frozenset({400, 422})
ELSEWHERE_STATUSES = frozenset({404, 405})
DOWN_FOR = 30.0
DOWN_ATTEMPTS = 3


class FailingWatch:
    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.answered = False
        self._invalid = 0
        self._elsewhere = 0
        self._refused_since: float | None = None
        self._refused = 0
        self.down_for = DOWN_FOR  # read at construction, so a test may shorten it
        self.first_rows = FIRST_ROWS

    @property
    def watching(self) -> bool:
        """Whether an answer would change anything (else it need not be told of one)."""
        return not self.answered or self._refused_since is not None

    def record(self, error: ProviderError | None) -> str | None:
        """Hear one finished attempt; a message saying why the run must stop, or None."""
        if error is None:
            self.answered = True
            self._refused_since = None
            return None
        if isinstance(error, ConnectionRefused):
            now = self._clock()
            if self._refused_since is None:
                self._refused_since, self._refused = now, 0
            self._refused += 1
            if self._refused >= DOWN_ATTEMPTS and now - self._refused_since >= self.down_for:
                return (
                    f"every attempt for {now - self._refused_since:.0f}s had its connection "
                    f"refused ({self._refused} attempts): the server is down or not at "
                    "--base-url; start it, or check the URL, and rerun"
                )
            return None
        self._refused_since = None
        if self.answered:
            return None
        if isinstance(error, HTTPStatusError) and error.status in INVALID_STATUSES:
            self._invalid += 1
            if self._invalid >= self.first_rows:
                return (
                    f"the first {self._invalid} rows all got HTTP {error.status} and none was "
                    f"answered: the server rejects these requests ({error.message}); fix the "
                    "parameters or prompts and rerun"
                )
            return None
        if isinstance(error, BadReply) and error.page:
            got = "a web page (HTML) where the API's JSON was due"
        elif isinstance(error, HTTPStatusError) and error.status in ELSEWHERE_STATUSES:
            got = f"HTTP {error.status}"
        else:
            return None
        self._elsewhere += 1
        if self._elsewhere >= self.first_rows:
            return (
                f"the first {self._elsewhere} attempts all got {got}, and none was answered: "
                "--base-url is not the API's address (or a login or challenge page answers for "
                "it); check it and rerun"
            )
        return None
