"""The persistent outbox every notification channel delivers through.

An alert is a promise to the owner, so it is written to SQLite (the outbox's own file,
``outbox.sqlite3`` beside the event index: ``store``) *before* anything is sent, and marked
sent right after the channel confirms.
One worker per recipient delivers that recipient's alerts strictly in order, so alerts never
shuffle after an outage, and a GIF or clip never arrives before the photo it replies to. A new
alert's photo may overtake an older event's GIF upload: an alert never waits for megabytes of
follow-up. SQLite and file reads run on the outbox's own I/O thread, not the shared pool, so
an alert never queues behind GIF encoding or inference.

Failures are sorted by what they mean (the channel raises one of these):

* ``RetryAfter(seconds)``: the server asked us to wait (Telegram's 429 ``retry_after``); nothing
  is sent to that recipient before it has passed;
* ``TransientError``: 5xx, timeouts, network down; retried with exponential backoff and jitter
  until the item is ``horizon_s`` old, then given up and reported failed. Its subclass
  ``ServerError`` says the server answered (a 5xx for this request): the item waits out its
  backoff but no longer holds the line, the next item that is due is tried meanwhile, so a
  poison item blocks the ones behind it for one attempt at most. Should that one fail too,
  it is an outage and the line waits for the head again, in order;
* ``PermanentError``: the request itself is wrong (4xx); reported failed at once;
* ``DeliveredUnknown``: the server said yes (2xx) in an answer that could not be read; the
  message was most likely delivered, so it is marked sent (without a result) and logged,
  never uploaded again.

A full card (``SQLITE_FULL``) or an I/O error does not hold an alert back nor end a task: an
alert that cannot be stored is kept in memory and delivered all the same (``unsaved`` in the
metrics), an outcome that cannot be recorded is kept too, and both reach the database at the
first write that succeeds again. Only a restart before that can lose (an unsaved alert) or
repeat (an unrecorded "sent") one message.

Restarts: pending rows are loaded at start and sent; rows marked sent are never sent again.
The idempotency key (channel, event id, kind, recipient) is UNIQUE, so enqueueing the same alert
twice (a replayed artifact, a retried publish) stores it once. A crash in the few microseconds
between the server's answer and the commit of "sent" can still repeat one message: no chat API
offers a way to ask "did you get this?".

When a recipient is far behind (``coalesce_after`` pending alerts, e.g. after a long outage),
the alerts of each camera are folded into their latest one, which the channel presents as a
summary ("12 events on front_door while offline") with the latest photo; their follow-ups
(GIF, clip) are dropped with them. Rate limits: a minimum interval and a per-minute cap per
recipient, and a per-camera alert budget per window so a flapping camera cannot flood; alerts
over the budget are counted and mentioned in the next alert of that camera.

``OutboxChannel`` is the base of the channel modules (Telegram, webhook, email): it owns the
outbox's lifecycle, the ``AlertGate``, the ``control.state`` / ``event.#`` subscriptions and the
text alert for events whose snapshot never came, so a channel writes only its config, what an
alert becomes (``_enqueue``) and how one is sent (``_deliver``).
"""

from spyoncino.helpers.outbox.channel import ChannelConfig, OutboxChannel
from spyoncino.helpers.outbox.delivery import (
    DeliveredUnknown,
    DeliveryError,
    Outbox,
    OutboxSettings,
    PermanentError,
    RateFor,
    RetryAfter,
    Sender,
    ServerError,
    TransientError,
)
from spyoncino.helpers.outbox.gate import ALL_CAMERAS, AlertGate
from spyoncino.helpers.outbox.store import (
    HEALTH_KINDS,
    PRIMARY_KINDS,
    SCHEMA,
    OutboxItem,
    counts,
    held_files,
    item_key,
    open_db,
    outbox_path,
)

__all__ = [
    "ALL_CAMERAS",
    "HEALTH_KINDS",
    "PRIMARY_KINDS",
    "SCHEMA",
    "AlertGate",
    "ChannelConfig",
    "DeliveredUnknown",
    "DeliveryError",
    "Outbox",
    "OutboxChannel",
    "OutboxItem",
    "OutboxSettings",
    "PermanentError",
    "RateFor",
    "RetryAfter",
    "Sender",
    "ServerError",
    "TransientError",
    "counts",
    "held_files",
    "item_key",
    "open_db",
    "outbox_path",
]
