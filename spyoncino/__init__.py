"""Spyoncino: a surveillance appliance for Raspberry Pi and Jetson boards."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# OpenCV's thread pool spins after every call by default; on a Pi that burns most of a core
# per camera for nothing (bench/results/rtsp.json). Must be set before cv2 is imported;
# setdefault lets an operator choose otherwise.
for _name in (
    "OPENCV_THREAD_POOL_ACTIVE_WAIT_WORKER",
    "OPENCV_THREAD_POOL_ACTIVE_WAIT_MAIN",
    "OPENCV_THREAD_POOL_ACTIVE_WAIT_PAUSE_LIMIT",
):
    os.environ.setdefault(_name, "0")
