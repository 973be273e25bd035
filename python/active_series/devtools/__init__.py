"""Developer tools, apart from the product: they import it, it never imports them. Their
commands (``db``, ``demo``, ``stripe-emulator``) join ``active-series`` through the entry
point group ``active_series.commands`` (:mod:`.commands`).

- :mod:`.testpg`: the throwaway servers of the tests (testing.postgresql);
- :mod:`.cluster`: a local PostgreSQL cluster that outlives its process, in a directory;
- :mod:`.localdb`: the persistent embedded cluster of ``active-series db``;
- :mod:`.worker_process`: ``active-series worker`` as a subprocess (demo, tests, benchmarks);
- :mod:`.stripe_emulator`: a local Stripe for the tests, the benchmarks and the demo;
- :mod:`.demo`: ``active-series demo``.
"""
