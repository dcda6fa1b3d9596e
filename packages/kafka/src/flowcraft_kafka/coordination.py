"""The ``kafka`` preset's coordination store: ``RedisCoordinationStore`` that tells the Kafka queue which job
the calling task committed a transition of, so the successors that task enqueues next are produced without
waiting and the job's record is finished once they are confirmed (``flowcraft_kafka.queue.finishing``)."""

from __future__ import annotations

from flowcraft.spi import Committed, Transition
from flowcraft_kafka.queue import finishing
from flowcraft_redis import RedisCoordinationStore


class KafkaCoordinationStore(RedisCoordinationStore):
    """``RedisCoordinationStore``; each ``commit`` also marks its job as the one the current task finishes."""

    async def commit(self, transition: Transition) -> Committed:
        finishing(transition.run_id, transition.job_key)
        return await super().commit(transition)
