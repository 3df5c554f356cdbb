"""The core imports no I/O framework: asyncio, aiortc, aiohttp, sqlite3, socket."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import parley.core

FORBIDDEN = ("asyncio", "aiortc", "aioice", "aiohttp", "av", "sqlite3", "socket", "ssl")


def test_core_modules_import_no_io_frameworks() -> None:
    modules = [m.name for m in pkgutil.walk_packages(parley.core.__path__, "parley.core.")]
    assert {"parley.core.call", "parley.core.envelope", "parley.core.kinds",
            "parley.core.relay.relay", "parley.core.relay.admission"} <= set(modules)
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        + "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "", f"the core pulled in: {result.stdout.strip()}"
