"""Run a terminal process: the terminal, its local API/UI, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from parley.core.errors import ErrorCode, LocalError
from parley.files import DataLock
from parley.media.ice import use_host_addresses
from parley.terminal.app import Terminal, TerminalConfig
from parley.terminal.browser import BrowserMedia
from parley.terminal.control import ControlServer

log = logging.getLogger("parley.terminal")


def build_terminal(config: TerminalConfig) -> tuple[Terminal, ControlServer]:
    """The terminal and its local API, with the media engine `config.media` names."""
    if config.media == "robot":
        terminal = Terminal(config)
        return terminal, ControlServer(terminal, config.ui_host, config.ui_port)
    if config.media == "browser":
        # The person's page does the media, reached through the local API server.
        browser = BrowserMedia(config.robot.ice)
        terminal = Terminal(config, engine=browser)
        control = ControlServer(terminal, config.ui_host, config.ui_port)
        browser.attach(control)
        return terminal, control
    raise LocalError(f"unknown media {config.media!r}", code=ErrorCode.BAD_CONFIG,
                     hint="use --media robot (aiortc in the terminal) or --media browser"
                          " (the person's web UI)")


async def run_terminal(config: TerminalConfig, ice_hosts: list[str] | None) -> None:
    """Run until SIGINT or SIGTERM; one process per data directory (see `DataLock`)."""
    with DataLock(config.data_dir, "a terminal", secret=True):
        await _run(config, ice_hosts)


async def _run(config: TerminalConfig, ice_hosts: list[str] | None) -> None:
    use_host_addresses(ice_hosts or None)
    terminal, control = build_terminal(config)
    await terminal.start()
    try:
        await control.start()
    except BaseException:
        await terminal.stop()
        raise
    # One line a supervisor (the demo, a script) can wait for, then a readable one.
    print(f"ui: {control.url}", flush=True)
    log.info("terminal %s ready (%s media); local UI at %s", terminal.device_id, config.media,
             control.origin)
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
