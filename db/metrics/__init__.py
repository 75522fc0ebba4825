"""Customer metrics: lifetime aggregates and RFM segments (``compute`` runs them; ``aggregate``, ``scores``,
``rules`` and ``result`` are its parts)."""
