"""What the hardware is: profiles that pick defaults for the board the service runs on.

Not core (core names no feature), not a module (it runs before any module is configured,
and from the Ansible role as ``python -m spyoncino.platform.profiles``).
"""
