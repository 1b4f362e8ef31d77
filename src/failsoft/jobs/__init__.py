"""Durable async inference: jobs accepted with ``Prefer: respond-async``, run by
workers inside the gateway at the lowest priority, results kept for a while.

At-least-once delivery, exactly-once effect: a job may run more than once (a
gateway dies after the model answered, before the result was stored), but its
result is stored once, fenced by the lease token, and one idempotency key names
one job.
"""

from failsoft.jobs.options import JobsOptions

__all__ = ["JobsOptions"]
