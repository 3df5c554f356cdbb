"""The pure core of Parley: keys, envelopes, safety numbers, SAS, call state, wire.

Nothing in this package performs I/O, reads the clock or imports asyncio, aiortc
or aiohttp (a test holds it to that). Every function that depends on time takes
`now_ms`; every stateful object is driven by method calls and answers with data.
"""
