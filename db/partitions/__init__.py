"""order_items partitions: quarterly rollover (``rollover``), the retention plan (``plan``), archive and
restore of retired quarters (``archive``), and the online migration of a plain table (``migration``, ``split``)."""
