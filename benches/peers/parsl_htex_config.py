"""Parsl config for parsl-perf: one HighThroughputExecutor block on this machine.

W workers (env PEERS_WORKERS, default 2), loopback address, Parsl's default encryption
(CurveZMQ, `encrypted=True`). compare.sh sets PEERS_RUN_DIR to keep runinfo/ out of the tree.
"""
import os

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

WORKERS = int(os.environ.get("PEERS_WORKERS", "2"))

config = Config(
    executors=[
        HighThroughputExecutor(
            label="htex_local",
            address="127.0.0.1",
            max_workers_per_node=WORKERS,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        )
    ],
    strategy="none",
    usage_tracking=0,
    run_dir=os.environ.get("PEERS_RUN_DIR", "runinfo"),
)
