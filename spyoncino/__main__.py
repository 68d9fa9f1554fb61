"""``python -m spyoncino`` is the ``spyoncino`` command."""

from __future__ import annotations

import sys

from spyoncino.cli import main

sys.exit(main())
