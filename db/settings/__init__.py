"""Runtime business rules: the ``settings`` table behind a TTL cache (``service``), its value rules
(``rules``), storage (``store``), cross-process invalidation (``listener``) and hit/miss counters (``stats``)."""
