"""The event index (``index``): the only owner of the event database's tables.

``module`` is the module (``EventIndex``), ``db`` the tables and the row helpers, ``schema``
their versions and migrations, ``reindex`` the rebuild from the media folder.
"""

from spyoncino.modules.storage.index.module import Config, EventIndex

__all__ = ["Config", "EventIndex"]
