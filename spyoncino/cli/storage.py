"""``spyoncino storage reindex``: rebuild the event index from the media folder."""

from __future__ import annotations

import argparse
import sys

from spyoncino.cli._common import EXIT_CONFIG, load, optional, print_config_errors
from spyoncino.core.config import ConfigError


def cmd_storage(args: argparse.Namespace) -> int:
    try:
        _r, service = load(args)
    except ConfigError as e:
        print_config_errors(e)
        return EXIT_CONFIG
    storage = service.current.storage
    reindex = optional("spyoncino.modules.storage.index.reindex", "reindex")
    if reindex is None:  # pragma: no cover - shipped with the package
        print("reindex is not available", file=sys.stderr)
        return 1
    n = reindex(storage.root, storage.db_path)
    print(f"reindexed {storage.root}: {n} missing row(s) restored into {storage.db_path}")
    return 0
