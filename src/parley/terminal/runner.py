"""Run a terminal process: the terminal, its local API/UI, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from parley.media.ice import use_host_addresses
from parley.terminal.app import Terminal, TerminalConfig
from parley.terminal.control import ControlServer

log = logging.getLogger("parley.terminal")


async def run_terminal(config: TerminalConfig, ice_hosts: list[str] | None) -> None:
    use_host_addresses(ice_hosts or None)
    terminal = Terminal(config)
    control = ControlServer(terminal, config.ui_host, config.ui_port)
    await terminal.start()
    await control.start()
    # One line a supervisor (the demo, a script) can wait for, then a readable one.
    print(f"ui: {control.url}", flush=True)
    log.info("terminal %s ready; local UI at %s", terminal.device_id, control.origin)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("terminal %s stopping", terminal.device_id)
        await control.stop()
        await terminal.stop()
        sys.stdout.flush()
