"""Import aiogram without building its ~650 pydantic models up front.

``import aiogram`` costs 2.3-2.9 s of CPU and 128 MB of RSS here (Python 3.11, aiogram 3.31,
pydantic 2.13), every start, every watchdog restart, every update; the bot uses perhaps twenty
of those models. Where it goes: ``aiogram.types`` defines 440 models with ``defer_build`` but
then calls ``model_rebuild()`` on every one of them to resolve their forward references, which
builds each validator and serializer (each inlines the schemas of the types it refers to, so
big ones like ``Message`` are built many times over); the 187 ``aiogram.methods`` models have
no ``defer_build`` at all and build on definition.

``load()`` imports aiogram with two changes, both confined to aiogram's own classes:

* while the import runs, every pydantic model defined in an ``aiogram.*`` module gets
  ``defer_build=True``;
* ``model_rebuild`` of an aiogram model called with aiogram's types namespace (its own eager
  loop) only records that namespace; the model is then built by pydantic itself on first use
  (validation, construction, serialisation), with that namespace plus its module's.

Measured (``bench/bench_startup.py``): the import drops to ~0.45 s and ~17 MB; the first
``Message`` parsed and ``SendMessage`` built cost ~0.1 s and ~5 MB more. Everything aiogram
does afterwards is unchanged (the Telegram tests run through this path against the Bot API
emulator). ``EAGER = True`` (benchmarks set it, for the figure before) imports it the plain
way.
"""

from __future__ import annotations

import importlib
import sys
import threading
from typing import Any

_lock = threading.Lock()
_namespace: dict[str, Any] = {}
_installed = False
#: import the plain way (every model built at import): the benchmark's "before"
EAGER = False


def _is_aiogram(cls: Any) -> bool:
    return str(getattr(cls, "__module__", "")).startswith("aiogram.")


def _install_lazy_rebuild() -> None:
    from pydantic import BaseModel

    original = BaseModel.model_rebuild.__func__  # type: ignore[attr-defined]

    def model_rebuild(cls: Any, /, **kwargs: Any) -> bool | None:
        ns = kwargs.get("_types_namespace")
        if not _is_aiogram(cls):
            return original(cls, **kwargs)  # type: ignore[no-any-return]
        if ns is not None and not kwargs.get("force"):
            _namespace.update(ns)  # aiogram's eager loop: build on first use instead
            return None
        if ns is None:
            module = sys.modules.get(cls.__module__)
            kwargs["_types_namespace"] = {**_namespace, **(vars(module) if module else {})}
        return original(cls, **kwargs)  # type: ignore[no-any-return]

    BaseModel.model_rebuild = classmethod(model_rebuild)  # type: ignore[assignment,method-assign]


#: what the Telegram module sends and reads: built in the worker right after the import, so
#: no validator is built on the event loop at the first alert (a Pi takes ~0.5 s for these)
SENDING = (
    "methods.SendPhoto",
    "methods.SendMessage",
    "methods.SendVideo",
    "methods.SendAnimation",
    "methods.EditMessageCaption",
    "methods.EditMessageText",
    "methods.EditMessageReplyMarkup",
    "methods.GetMe",
    "types.Message",
    "types.User",
    "types.InlineKeyboardMarkup",
    "types.InlineKeyboardButton",
    "types.ReplyParameters",
    "types.BufferedInputFile",
)
#: and with commands on: getUpdates' Update refers to nearly every type aiogram has, so this
#: one costs most of what an eager import would
POLLING = (
    "methods.GetUpdates",
    "methods.DeleteWebhook",
    "methods.SetMyCommands",
    "methods.AnswerCallbackQuery",
    "types.Update",
    "types.CallbackQuery",
    "types.BotCommand",
)


def warm(names: tuple[str, ...]) -> None:
    """Build the validators of ``names`` (``"types.Message"``) now (blocking: a worker)."""
    import aiogram

    for name in names:
        package, _, cls_name = name.partition(".")
        cls = getattr(importlib.import_module(f"aiogram.{package}"), cls_name, None)
        if cls is not None and hasattr(cls, "model_rebuild"):
            cls.model_rebuild(force=True)
    del aiogram


def load(*warm_names: str) -> Any:
    """``import aiogram`` (blocking: run it in a worker), models built on first use except
    ``warm_names``, built here."""
    module = _load()
    warm(warm_names)
    return module


def _load() -> Any:
    global _installed
    with _lock:
        if "aiogram" in sys.modules or EAGER:
            return importlib.import_module("aiogram")
        from pydantic._internal import _model_construction as mc

        meta = mc.ModelMetaclass
        saved = meta.__dict__["__new__"]
        original_new = meta.__new__

        def new(
            mcs: Any, name: str, bases: Any, namespace: dict[str, Any], *a: Any, **kw: Any
        ) -> Any:
            if str(namespace.get("__module__", "")).startswith("aiogram."):
                config = {**namespace.get("model_config", {}), "defer_build": True}
                namespace["model_config"] = config
            return original_new(mcs, name, bases, namespace, *a, **kw)

        if not _installed:
            _install_lazy_rebuild()
            _installed = True
        meta.__new__ = new  # type: ignore[method-assign,assignment]
        try:
            return importlib.import_module("aiogram")
        finally:
            type.__setattr__(meta, "__new__", saved)
