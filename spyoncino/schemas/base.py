"""Base for control-plane payloads: frozen, validated, versioned."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Payload(BaseModel):
    """Every control-plane payload is frozen and carries ``schema_version``.

    Bump ``schema_version`` of a payload when a field changes meaning or is removed; adding an
    optional field does not need a bump.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    schema_version: int = 1
