"""A parse worker process: ``python -m db.loader.worker_process``, started by ``workers.ChunkWorkers``.

An entry point of its own: run as ``-m db.loader.workers``, the module would be imported twice (once by
the ``db.loader`` package, once as ``__main__``).
"""

import os

from db.loader.workers import NICE, serve

if __name__ == "__main__":
    os.nice(NICE)
    serve()
