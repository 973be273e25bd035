"""Developer tools, apart from the product: they import it, it never imports them (the
command line hands ``db``, ``demo`` and ``stripe-emulator`` over to them when they run).

- :mod:`.cluster`: start, stop, restart or kill a local PostgreSQL cluster in a directory;
- :mod:`.localdb`: the persistent embedded cluster of ``active-series db``;
- :mod:`.worker_process`: ``active-series worker`` as a subprocess (demo, tests, benchmarks);
- :mod:`.stripe_emulator`: a local Stripe for the tests, the benchmarks and the demo;
- :mod:`.demo`: ``active-series demo``.
"""
