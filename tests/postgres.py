"""The tests' PostgreSQL: a throwaway cluster on 127.0.0.1 (`parley.lab_postgres`)."""

from __future__ import annotations

from parley.lab_postgres import PostgresCluster

__all__ = ["PostgresCluster"]
