"""The `image` marker: tests that build and boot the SD-card image (`make test-image`)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "image: builds and boots the SD-card image (make test-image)"
    )
