"""Native libraries' messages during training, summarised instead of printed.

LightGBM's C++ core prints every message to stdout ("[LightGBM] [Warning] No further
splits with positive gain, best gain: -inf"): about 600 lines for one `ml-platform train`
on the default dataset, which buries the platform's own output. Inside
`summarised_native_logs()` its messages are routed to the `lightgbm` Python logger and
counted; the caller logs one line with the counts and the most frequent message.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_LEVEL = re.compile(r"^\[LightGBM\] \[(\w+)\] ")


@dataclass
class NativeMessages:
    """What a library said: counts per level and per message."""

    library: str = "LightGBM"
    by_level: Counter = field(default_factory=Counter)
    by_message: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_level.values())

    def summary(self) -> str | None:
        """One line, or None when the library said nothing."""
        if not self.total:
            return None
        levels = ", ".join(f"{n} {level.lower()}" for level, n in self.by_level.most_common())
        message, count = self.by_message.most_common(1)[0]
        return (f"{self.library} printed {self.total} messages while training ({levels}); "
                f"most frequent ({count}x): {message!r}. They are on the Python logger "
                f"'{self.library.lower()}' at DEBUG.")


class _Counting(logging.Handler):
    def __init__(self, messages: NativeMessages):
        super().__init__(logging.DEBUG)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip()
        if not text:
            return
        match = _LEVEL.match(text)
        level = match.group(1) if match else logging.getLevelName(record.levelno).title()
        self.messages.by_level[level] += 1
        self.messages.by_message[text[match.end():] if match else text] += 1


@contextmanager
def summarised_native_logs() -> Iterator[NativeMessages]:
    """Route LightGBM's native messages to the `lightgbm` logger (native lines at DEBUG,
    its Python warnings at WARNING) and count them while the block runs. Without
    LightGBM installed the block runs unchanged."""
    messages = NativeMessages()
    try:
        import lightgbm
    except ImportError:  # an optional library: nothing to route
        yield messages
        return
    logger = logging.getLogger("lightgbm")
    # Registered for good: the native library's stdout printing is never wanted.
    lightgbm.register_logger(logger, info_method_name="debug", warning_method_name="warning")
    handler = _Counting(messages)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
