"""``rnncast flink-cluster``: a local Flink session cluster for the Beam job, in the foreground until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from models.argtypes import int_at_least, positive_float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``flink-cluster`` options."""
    parser.description = (
        "Start a standalone Flink session cluster on 127.0.0.1 (JobManager, TaskManagers, Beam's job server; "
        "each TaskManager starts the Python SDK workers it needs through Beam's boot), print one line "
        "'flink ready: OPTIONS' with the Beam options `rnncast serve` needs for it, and stop everything on "
        "Ctrl-C/SIGTERM. The pieces come from `make flink`."
    )
    parser.add_argument(
        "--taskmanagers", type=int_at_least(1), default=2, help="TaskManagers to start (default: %(default)s)"
    )
    parser.add_argument(
        "--slots", type=int_at_least(1), default=1, help="task slots per TaskManager (default: %(default)s)"
    )
    parser.add_argument(
        "--rest-port",
        type=int_at_least(0),
        default=8081,
        help="the JobManager's REST/web port on 127.0.0.1; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="how often Flink checkpoints the job's state (default: %(default)s)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="configuration, logs, checkpoints and savepoints (default: a new temporary directory)",
    )


class _Terminated(Exception):
    pass


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def run(args: argparse.Namespace) -> int:
    """Starts the cluster, prints the ready line on stdout, waits; 0 after Ctrl-C/SIGTERM, 1 if a daemon dies."""
    from pipeline.cli import UsageError
    from pipeline.flink_cluster import FlinkCluster, FlinkClusterError, MissingPieces

    if args.taskmanagers < 1 or args.slots < 1:
        raise UsageError(f"--taskmanagers and --slots must be at least 1, got {args.taskmanagers} and {args.slots}")
    if not 0 <= args.rest_port <= 65535:
        raise UsageError(f"--rest-port must be 0..65535, got {args.rest_port}")
    if args.checkpoint_interval <= 0:
        raise UsageError(f"--checkpoint-interval must be positive, got {args.checkpoint_interval:g}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rnncast-flink-"))
    cluster = FlinkCluster(
        workdir,
        taskmanagers=args.taskmanagers,
        slots=args.slots,
        rest_port=args.rest_port,
        checkpoint_interval_ms=int(args.checkpoint_interval * 1000),
    )
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        try:
            cluster.start()
        except MissingPieces as err:
            raise UsageError(str(err)) from None
        except FlinkClusterError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(cluster.ready_line(), flush=True)
        print(
            f"Flink {cluster.rest_url} ({args.taskmanagers} TaskManagers x {args.slots} slots), "
            f"logs in {workdir / 'log'}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        lost: set[str] = set()
        while (dead := cluster.dead(taskmanagers=False)) is None:
            for gone in cluster.exited():
                if gone.name not in lost:
                    lost.add(gone.name)
                    print(
                        f"warning: {gone.name} exited with status {gone.proc.returncode}; Flink restarts its jobs "
                        f"on the slots left",
                        file=sys.stderr,
                        flush=True,
                    )
            time.sleep(0.5)
        print(f"error: {dead.name} exited by itself with status {dead.proc.returncode}\n{dead.tail()}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Terminated):
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the stop short
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)
