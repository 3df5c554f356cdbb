"""Speech for the quality benchmark: made with espeak-ng, scored with PESQ wide-band.

PESQ (ITU-T P.862.2, the `pesq` package) compares a degraded recording with
the reference it came from, at 16 kHz. Calls run at 48 kHz, so both sides are
resampled with a polyphase filter (`scipy.signal.resample_poly`), never by
dropping samples. The recording is first aligned to the reference by
cross-correlation (PESQ then does its own fine alignment).
"""

from __future__ import annotations

import fractions
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from av import AudioFrame
from pesq import pesq
from scipy.io import wavfile
from scipy.signal import correlate, resample_poly

from bench.samples import FRAME, first_channel

RATE = 48_000
PESQ_RATE = 16_000
# Harvard sentences (IEEE 1969), the usual material for speech quality tests.
SENTENCES = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue"
             " background. It is easy to tell the depth of a well. These days a chicken leg"
             " is a rare dish.")
# The quality benchmark's voices: espeak-ng's, each reading sentences of its language.
VOICES = {
    "en": ("en-us", SENTENCES),
    "ru": ("ru", "Съешь же ещё этих мягких французских булок, да выпей чаю. В чащах юга жил"
                 " бы цитрус? Да, но фальшивый экземпляр. Широкая электрификация южных губерний"
                 " даст мощный толчок подъёму сельского хозяйства."),
    "fr": ("fr-fr", "Portez ce vieux whisky au juge blond qui fume. Le cœur déçu mais l'âme"
                    " plutôt naïve, Louÿs rêva de crapaüter en canoë au delà des îles. Voix"
                    " ambiguë d'un cœur qui, au zéphyr, préfère les jattes de kiwis."),
}
LEAD_S = 1.0  # silence before the speech: the call is up and flowing by then
TAIL_S = 1.0


def espeak_missing() -> str | None:
    if shutil.which("espeak-ng") is None:
        return "espeak-ng is not installed: apt-get install espeak-ng (bench/run does it as root)"
    return None


def make_speech(workdir: Path, voice: str = "en") -> np.ndarray:
    """A voice's sentences (`VOICES`), spoken by espeak-ng, as int16 mono at 48 kHz with
    silence around."""
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / f"speech-{voice}-espeak.wav"
    name, text = VOICES[voice]
    subprocess.run(["espeak-ng", "-v", name, "-s", "150", "-w", str(raw), text],
                   check=True, capture_output=True)
    rate, data = wavfile.read(raw)
    x = data.astype(np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    g = fractions.Fraction(RATE, rate)
    x = resample_poly(x, g.numerator, g.denominator)
    x *= (0.1 * 32767) / np.sqrt(np.mean(x ** 2))  # speech at about -20 dBFS RMS
    x = np.clip(x, -32767, 32767)
    pad = np.zeros(int(LEAD_S * RATE)), np.zeros(int(TAIL_S * RATE))
    speech = np.concatenate([pad[0], x, pad[1]]).astype(np.int16)
    wavfile.write(workdir / f"speech-{voice}-48k.wav", RATE, speech)
    return speech


def to_pesq_rate(x: np.ndarray) -> np.ndarray:
    return resample_poly(x.astype(np.float64), 1, RATE // PESQ_RATE)


def align(reference: np.ndarray, degraded: np.ndarray) -> tuple[np.ndarray, int]:
    """`degraded` shifted to line up with `reference`, cut or padded to its length."""
    score = correlate(degraded, reference, mode="full", method="fft")
    lag = int(np.argmax(score)) - (len(reference) - 1)
    shifted = degraded[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag), degraded])
    out = np.zeros(len(reference))
    n = min(len(out), len(shifted))
    out[:n] = shifted[:n]
    return out, lag


def pesq_wb(reference48: np.ndarray, degraded48: np.ndarray) -> float:
    """PESQ wide-band (MOS-LQO) of a 48 kHz recording against its 48 kHz reference."""
    ref = to_pesq_rate(reference48)
    deg, _ = align(ref, to_pesq_rate(degraded48))
    return float(pesq(PESQ_RATE, ref, deg, "wb"))


def opus_only(speech: np.ndarray) -> np.ndarray:
    """The clip through aiortc's own Opus encoder and decoder, nothing else."""
    return through_opus(speech, OpusEncoder(), OpusDecoder())


def through_opus(speech: np.ndarray, encoder: OpusEncoder, decoder: Any) -> np.ndarray:
    """The clip through `encoder` and `decoder` (aiortc's interface), 20 ms frames in order."""
    out = []
    for i, start in enumerate(range(0, len(speech) - FRAME + 1, FRAME)):
        frame = AudioFrame.from_ndarray(speech[start:start + FRAME].reshape(1, -1),
                                        format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, i * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        packets, timestamp = encoder.encode(frame)
        for packet in packets:
            for decoded in decoder.decode(JitterFrame(packet, timestamp)):
                out.append(first_channel(decoded.to_ndarray().reshape(-1)))
    return np.concatenate(out)


def write_wav(path: Path, samples: np.ndarray) -> None:
    wavfile.write(path, RATE, np.clip(samples, -32768, 32767).astype(np.int16))
