"""The shadow lane: where a shadow challenger scores its copies of live requests, apart
from the champion.

A shadow copy never runs in the champion's predict thread or under its lock: the lane
has one thread of its own (and `SHADOW_LOCK`), and its queue is the router's bound on
copies in flight (`ML_API_SHADOW_MAX_IN_FLIGHT`), so a challenger 100x slower than the
champion only makes copies wait for each other, and copies past the bound are shed
(counted in ml_api_shadow_skipped_total, logged) before anything else waits. A compiled
challenger answers in the lane's thread too, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from serving.model.served import SHADOW_LOCK, ServedModel

_T = TypeVar("_T")


def shadow_predict(model: ServedModel, rows: list[list]
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """What the micro-batcher returns for `rows` ((probabilities, predicted index) or
    (values, standard deviations or None)), computed in the lane's thread under
    SHADOW_LOCK: the compiled graph when it answers every row, else the Pipeline."""
    answered = model.compiled_answer(rows)
    if answered is not None:
        return answered
    if model.is_regression:
        return model.predict_values(rows, SHADOW_LOCK)
    proba = model.predict_proba(rows, SHADOW_LOCK)
    return proba, proba.argmax(axis=1)


class ShadowLane:
    """One thread for shadow scoring; its queue holds at most the router's bound."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")

    async def run(self, work: Callable[..., _T], *args) -> _T:
        """`work(*args)` in the lane's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    def close(self) -> None:
        """Drop queued copies and stop the thread once the running one ends (not
        waited for: shutdown never waits on a slow shadow)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
