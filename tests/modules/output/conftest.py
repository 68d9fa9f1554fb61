"""Fixtures shared by the output channel tests."""

from __future__ import annotations

from tests.support.botapi import botapi

__all__ = ["botapi"]
