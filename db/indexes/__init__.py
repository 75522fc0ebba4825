"""Indexes: the declared ones built ``CONCURRENTLY`` (``ensure``) and the first load's deferred build (``deferred``)."""
