"""Runs N `true` tasks on HyperQueue and prints one JSON line with the timings.

The `hyperqueue` wheel from PyPI ships no `hq` executable: its Python extension embeds the
HyperQueue server and worker (Rust), started in-process by `hyperqueue.cluster.LocalCluster`.
One worker with W CPUs runs W tasks at a time; each task is a `true` process with no stdout or
stderr files (`stdout=None, stderr=None`), all N in one job submitted in one call.

usage: hq_true.py N W OUT_JSON
"""
import json
import sys
import tempfile
import time

from hyperqueue import Job
from hyperqueue.cluster import LocalCluster, WorkerConfig
from hyperqueue.ffi import get_version


def run_job(client, n, cwd):
    """Submits n `true` tasks as one job; returns (submit_s, done_s, last_incomplete_poll_s, failed)."""
    job = Job(default_workdir=cwd, max_fails=None)
    for _ in range(n):
        job.program(["true"], stdout=None, stderr=None)
    polls = []

    def on_poll(jobs):
        finished = sum(s["finished"] for s in jobs.values())
        polls.append((time.perf_counter(), finished))

    start = time.perf_counter()
    submitted = client.submit(job)
    submit_s = time.perf_counter() - start
    failed_jobs = client.connection.wait_for_jobs([submitted.id], on_poll)
    done_s = time.perf_counter() - start
    # wait_for_jobs polls the server (about once a second): the job finished after the last poll
    # that still saw unfinished tasks and before the poll that returned.
    incomplete = [t - start for (t, f) in polls if f < n]
    last_incomplete = max(incomplete) if incomplete else submit_s
    return submit_s, done_s, last_incomplete, len(failed_jobs), len(polls)


def main():
    n, workers, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hq-peers-") as server_dir:
        with LocalCluster(server_dir=server_dir, worker_config=WorkerConfig(cores=workers)) as cluster:
            client = cluster.client()
            started_s = time.perf_counter() - t0
            # Warm-up: the worker has registered and run one task before timing starts.
            run_job(client, 1, server_dir)
            submit_s, done_s, lower_s, failed, polls = run_job(client, n, server_dir)
    total_s = time.perf_counter() - t0
    report = {
        "system": "hyperqueue",
        "version": get_version(),
        "how": "pip wheel, embedded server+worker (hyperqueue.cluster.LocalCluster), 1 worker with W cpus",
        "task": "program ['true'], stdout=None, stderr=None, 1 cpu each, N tasks in one job",
        "tasks": n,
        "workers": workers,
        "failed_jobs": failed,
        "submit_s": round(submit_s, 3),
        "wall_s": round(done_s, 3),
        "wall_s_lower_bound": round(lower_s, 3),
        "polls": polls,
        "tasks_per_s": round(n / done_s, 1),
        "tasks_per_s_upper_bound": round(n / max(lower_s, 1e-9), 1),
        "cluster_start_s": round(started_s, 3),
        "process_total_s": round(total_s, 3),
    }
    with open(out, "w") as f:
        json.dump(report, f)
    print(json.dumps(report))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
