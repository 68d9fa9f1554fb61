"""The runtime core: bus, contracts, config, orchestrator. Modules import from here."""

from __future__ import annotations

from spyoncino.core.bus import Bus, BusAdapter, Message, Topic
from spyoncino.core.contracts import (
    BaseModule,
    BoundedExecutor,
    CameraOptions,
    ModuleConfig,
    ModuleConfigError,
    ModuleContext,
    ModuleNotReady,
)

__all__ = [
    "BaseModule",
    "BoundedExecutor",
    "Bus",
    "BusAdapter",
    "CameraOptions",
    "Message",
    "ModuleConfig",
    "ModuleConfigError",
    "ModuleContext",
    "ModuleNotReady",
    "Topic",
]
