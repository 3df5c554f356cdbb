"""Debian's Chromium as the browser tests and the browser benchmark run it (no pytest here).

Fake camera and microphone (30 fps), permission prompts answered, loopback
allowed as an ICE candidate, and nothing fetched from the network.
"""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream=fps=30",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
]
