"""The system's libopus decoder, called directly (ctypes), for what FFmpeg's wrapper never does.

aiortc decodes Opus through FFmpeg's libopus wrapper, which only ever calls
``opus_decode`` with a packet and ``decode_fec=0``: it can neither conceal a
lost packet properly nor recover one from the in-band FEC (LBRR) that the
next packet carries. This module binds the four libopus calls robot media
needs, from the system library (Debian: ``libopus0``), and nothing else:

* ``opus_decode(st, data, len, pcm, 5760, 0)``: decode a packet;
* ``opus_decode(st, data, len, pcm, n, 1)``: recover the `n` samples before
  this packet from its FEC, concealing whatever part of them it does not
  cover (libopus itself falls back to concealment where there is no FEC);
* ``opus_decode(st, NULL, 0, pcm, n, 0)``: conceal `n` lost samples;
* ``opus_packet_get_nb_samples``: how much audio a packet holds.

All codec work is libopus's; this file only moves bytes and samples.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import weakref
from functools import cache

import numpy as np

from parley.core.errors import ErrorCode, LocalError

RATE = 48_000
MAX_SAMPLES = 5760  # 120 ms at 48 kHz: the longest Opus packet
STEP = 120  # 2.5 ms: concealment and FEC lengths must be multiples of it
INSTALL_HINT = "install the system's libopus (Debian: apt-get install libopus0)"


@cache
def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("opus") or "libopus.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    i16p = ctypes.POINTER(ctypes.c_int16)
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, i16p,
                                ctypes.c_int, ctypes.c_int]
    lib.opus_packet_get_nb_samples.restype = ctypes.c_int
    lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [ctypes.c_int]
    return lib


def available() -> bool:
    return _library() is not None


def _lib() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise LocalError("libopus was not found", code=ErrorCode.BAD_CONFIG, hint=INSTALL_HINT)
    return lib


class OpusError(Exception):
    """libopus refused a packet (e.g. a corrupt one)."""


def packet_samples(data: bytes) -> int:
    """Samples (per channel, 48 kHz) in one Opus packet; OpusError if it is malformed."""
    n = _lib().opus_packet_get_nb_samples(data, len(data), RATE)
    if n <= 0:
        raise OpusError(_lib().opus_strerror(n).decode())
    return int(n)


class Decoder:
    """One libopus decoder state: 48 kHz, interleaved int16, `channels` channels."""

    def __init__(self, channels: int = 2) -> None:
        lib = _lib()
        error = ctypes.c_int()
        state = lib.opus_decoder_create(RATE, channels, ctypes.byref(error))
        if not state or error.value != 0:
            raise LocalError(f"libopus could not make a decoder: {lib.opus_strerror(error.value)}")
        self.channels = channels
        self._lib = lib
        self._state = ctypes.c_void_p(state)
        self._pcm = np.zeros(MAX_SAMPLES * channels, dtype=np.int16)
        self._out = self._pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))
        weakref.finalize(self, lib.opus_decoder_destroy, self._state)

    def _run(self, data: bytes | None, samples: int, fec: bool) -> np.ndarray:
        n = self._lib.opus_decode(self._state, data, len(data) if data else 0, self._out,
                                  samples, int(fec))
        if n < 0:
            raise OpusError(self._lib.opus_strerror(n).decode())
        return self._pcm[:n * self.channels].reshape(n, self.channels).copy()

    def decode(self, data: bytes) -> np.ndarray:
        """A received packet: (samples, channels) int16."""
        return self._run(data, MAX_SAMPLES, False)

    def conceal(self, samples: int) -> np.ndarray:
        """libopus's concealment of `samples` lost samples (a multiple of 2.5 ms)."""
        return self._run(None, _whole_steps(samples), False)

    def recover(self, data: bytes, samples: int) -> np.ndarray:
        """The `samples` lost just before `data`, from its in-band FEC where it has some.

        libopus conceals the part that FEC does not cover (all of it, when `data`
        carries none); `data` itself is not decoded: pass it to `decode` next.
        """
        return self._run(data, _whole_steps(samples), True)


def _whole_steps(samples: int) -> int:
    n = min(MAX_SAMPLES, samples - samples % STEP)
    if n <= 0:
        raise ValueError(f"{samples} samples: concealment needs a multiple of {STEP}")
    return n
