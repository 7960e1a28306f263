"""First-use notes: one line when a long one-time step starts (a conversion, a timing, a measured choice).

They go to the `specvlm.firstuse` logger at INFO, so a library user sees them only with logging set up for it, and
the `specvlm` command shows the first of them on a terminal only (all of them with --verbose); a captured stderr
(a pipe, a test, CI) stays empty.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("specvlm.firstuse")


def first_use(what: str, cached_in: Path | None = None) -> None:
    where = f" (cached in {cached_in})" if cached_in is not None else ""
    log.info("specvlm: one-time set-up on this machine (later runs skip it): %s%s", what, where)


class FirstOnly(logging.Filter):
    """Lets one record through, then none: one line for a first run's whole set of one-time steps."""

    def __init__(self) -> None:
        super().__init__()
        self.shown = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.shown:
            return False
        self.shown = True
        return True


@contextlib.contextmanager
def transformers_bars() -> Iterator[None]:
    """Within the block, progress bars that transformers draws with plain tqdm (its GGUF conversion does) follow
    transformers' own switch (`transformers.utils.logging.disable_progress_bar`), as its other bars do: hidden while
    it is off.  Log records still reach their handlers; only what is written straight to sys.stderr is held back."""
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled():
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield
