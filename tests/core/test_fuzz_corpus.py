"""Every fuzz target over its seed corpus and over every crash the fuzzers ever found.

`fuzz/targets.py` names what faces the network; a target may fail only with
Parley's own errors. Each input that once crashed one (`fuzz/regressions/
TARGET/`, copied there from `fuzz/out/crashes/`) is run here for good, so that
a fix cannot be undone unnoticed; the seeds show each target reaches past its
first check. `scripts/fuzz` runs the fuzzers themselves; a short run of each is
`tests/test_fuzz_short.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz.targets import TARGETS, run

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
INPUTS = sorted(p for kind in ("corpus", "regressions") for p in (FUZZ / kind).glob("*/*"))


def test_every_target_has_seeds() -> None:
    assert {p.parent.name for p in (FUZZ / "corpus").glob("*/*")} == set(TARGETS)
    assert {p.parent.name for p in (FUZZ / "regressions").glob("*/*")} <= set(TARGETS)


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: f"{p.parent.parent.name}/"
                         f"{p.parent.name}/{p.name}")
def test_an_input_fails_only_with_parleys_own_errors(path: Path) -> None:
    run(path.parent.name, path.read_bytes())


def test_the_seeds_get_past_the_first_check() -> None:
    """A seed that every target refuses at once would fuzz nothing but the refusal."""
    from parley.core.errors import ParleyError

    taken = set()
    for path in (FUZZ / "corpus").glob("*/*"):
        try:
            TARGETS[path.parent.name](path.read_bytes())
            taken.add(path.parent.name)
        except ParleyError:
            pass
    # The SDP seed's fingerprint is not the target's fixed one, so it is refused at the
    # last check; and a checkpoint's seed is signed by the key the target holds.
    assert taken >= set(TARGETS) - {"sdp"}, set(TARGETS) - taken
