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

import numpy as np

from serving.batcher import MicroBatcher
from serving.model.served import SHADOW_LOCK, ServedModel


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
    """A micro-batcher of its own for shadow copies (concurrent copies on one model share
    a call, as the champion's do), in its own thread; its queue holds at most the
    router's bound."""

    def __init__(self, max_rows: int = 64) -> None:
        self._batcher = MicroBatcher(max_rows=max_rows, max_wait_s=0.0,
                                     predict_fn=shadow_predict, inline=False,
                                     thread_name="shadow")
        self._started = False

    async def predict(self, model: ServedModel, rows: list[list]
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """The batcher's outputs for `rows`, computed in the lane's thread."""
        if not self._started:
            self._batcher.start()
            self._started = True
        return await self._batcher.predict(model, rows)

    async def stop(self, timeout: float = 1.0) -> None:
        """Answer what is queued (up to `timeout`), then stop the lane's thread."""
        if self._started:
            await self._batcher.stop(timeout)
            self._started = False
