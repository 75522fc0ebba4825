"""A job process for the lock faults: holds a job lock in a Prefect flow until stdin closes or it is killed.

Prints one JSON line once the lock is held: its pid, the lock's name and the Prefect lease id.
"""

from __future__ import annotations

import json
import os
import sys

from prefect import flow

from flows.locks import job_lock
from flows.runtime import current_flow_run_id


@flow(name="lock-holder")
def hold(url: str, group: str) -> None:
    with job_lock(group, url=url, schema="public", wait=0, flow_run_id=current_flow_run_id()) as (holder,):
        print(json.dumps({"pid": os.getpid(), "name": holder.name, "lease_id": holder.lease_id}), flush=True)
        sys.stdin.read()  # the job "runs" until the test closes stdin, or kills the process


if __name__ == "__main__":
    hold(sys.argv[1], sys.argv[2])
