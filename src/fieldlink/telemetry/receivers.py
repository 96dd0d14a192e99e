"""Signal receivers of the telemetry context.

The sample tables are raw SQL with no foreign key to ``Series`` (a foreign key would cost every
insert on the hot path), so nothing cascades to them. When a series goes — its measuring point or
asset was deleted, or its organisation purged — its samples go in the same transaction.
"""

from __future__ import annotations

from typing import Any

from fieldlink.telemetry import storage
from fieldlink.telemetry.models import Series

# Past any timestamp the protocol accepts: "before this" means everything.
_END_OF_TIME = 2**62


def delete_samples_of_series(sender: type[Series], instance: Series, **_: Any) -> None:
    storage.delete_before([instance.pk], _END_OF_TIME)
