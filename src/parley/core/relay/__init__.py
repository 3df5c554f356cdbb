"""The line server's decisions, pure: admission, sessions, rates, quotas, routing, paging.

Nothing here opens a socket, reads a clock or imports an I/O framework (the
purity test holds it to that): the server's aiohttp layer feeds it bytes and
``now`` and carries out what it asks of each connection, and the store sits
behind `relay.RelayStore`, so that another store or several server nodes can
take the place of today's SQLite on one node.
"""
