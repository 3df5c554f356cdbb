"""What limits the server's store on PostgreSQL: its round trips or its WAL flush?

    .venv/bin/python -m bench.pg_store [--cpu N]

The store alone, no server, making the calls the relay makes: envelopes stored
(one statement each), committed in groups as the server commits once per loop
turn, then acknowledged (deleted, their ids kept: one statement) and committed
again, on a throwaway durable cluster (`parley.lab_postgres`, pinned
to the last CPU). Each group size runs twice, with the WAL flushed at each
commit (``synchronous_commit = on``, what the server uses) and without (the
baseline: what the flush costs), and prints the ratio. ``--cpu`` pins this
process: the same CPU as PostgreSQL, or another.
"""

from __future__ import annotations

import argparse
import os
import time

from parley.lab_postgres import PostgresCluster
from parley.server.store import ServerStore

ENVELOPES = 4_000
BODY = "x" * 600  # about a sealed message's size


def rate(store: ServerStore, per_commit: int, tag: str) -> float:
    """Envelopes a second through store, commit, ack, commit."""
    start = time.perf_counter()
    for first in range(0, ENVELOPES, per_commit):
        ids = [f"{tag}-{n}" for n in range(first, first + per_commit)]
        for ident in ids:
            store.store_envelope(ident, "washington/desk", "moscow/desk", BODY, 1)
        store.commit_group()
        for ident in ids:
            store.delivered("moscow/desk", ident)
        store.commit_group()
    return ENVELOPES / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_store")
    parser.add_argument("--cpu", type=int, help="pin this process to this CPU")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    cluster = PostgresCluster(durable=True, quiet=True, cpu=cpus[-1]).start()
    try:
        print(f"PostgreSQL on CPU {cpus[-1]}, this process on"
              f" {sorted(os.sched_getaffinity(0))}; {ENVELOPES} envelopes each")
        print(f"{'per commit':>10}  {'flushed':>10}  {'not flushed':>11}  ratio")
        for per_commit in (1, 8, 64):
            got = {}
            for sync in ("on", "off"):
                store = ServerStore(url=cluster.new_database())
                try:
                    store.db.execute(f"SET synchronous_commit = {sync}")
                    got[sync] = rate(store, per_commit, sync)
                finally:
                    store.close()
            print(f"{per_commit:>10}  {got['on']:>8,.0f}/s  {got['off']:>9,.0f}/s"
                  f"  {got['on'] / got['off']:.2f}x")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
