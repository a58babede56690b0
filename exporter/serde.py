"""Reading result objects back from the JSON a stored run holds, across versions of the exporter.

During a rolling upgrade, processes of two versions share the ``drift_runs`` table: a newer writer may add a field
that an older reader does not know, and a newer reader meets runs stored before a field existed. So a result is
built from the fields its class knows, and a field the document lacks takes the class's default.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def known_fields(cls: type[T], doc: dict[str, Any], **parsed: Any) -> T:
    """``cls(**doc)`` keeping only the fields ``cls`` declares; ``parsed`` replaces the nested ones."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in doc.items() if k in names}
    values.update(parsed)
    return cls(**values)
