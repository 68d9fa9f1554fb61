"""Moved to :mod:`spyoncino.platform.profiles`; this name stays for roles written before the move.

A box provisioned with an older checkout of the Ansible role installs the newest package and then
runs ``python -m spyoncino.core.profiles --json`` to size the unit: that must keep working.
"""

from __future__ import annotations

import sys

from spyoncino.platform.profiles import main

if __name__ == "__main__":  # pragma: no cover - run by older roles as a command
    sys.exit(main())
