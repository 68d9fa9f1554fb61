"""The runtime core: bus, contracts, config, orchestrator. Modules import from here."""

from __future__ import annotations

from spyoncino.core.bus import Bus, Message, Topic
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
    "CameraOptions",
    "Message",
    "ModuleConfig",
    "ModuleConfigError",
    "ModuleContext",
    "ModuleNotReady",
    "Topic",
]
