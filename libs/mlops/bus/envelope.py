"""Temporary, marked for issue 14's sweep: the envelope moved to `mlops.envelope`.

services/inference and services/monitor still import `decode`, `new_event_id` and `rfc3339` from
here (and the module as `mlops.bus.envelope`); delete this file once nothing does.
"""

from mlops.envelope import decode, new_event_id, rfc3339

__all__ = ["decode", "new_event_id", "rfc3339"]
