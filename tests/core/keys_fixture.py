from __future__ import annotations

from functools import cache

from parley.core.keys import DeviceKeys


@cache
def device(name: str) -> DeviceKeys:
    """Key generation is the slow part of these tests; one key set per name."""
    return DeviceKeys.generate()
