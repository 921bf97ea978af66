"""The ``rnncast`` console command: a dispatcher over one module per subcommand.

Subcommand modules are imported lazily so that ``rnncast --help`` does not pay for
TensorFlow or Beam imports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from models.errors import UsageError

__all__ = ["UsageError", "main", "SUBCOMMANDS"]

# name -> (module, one-line help). Each module exposes add_arguments(parser) and run(args) -> int.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("models.cli_train", "train a recurrent forecaster on a CSV and write an artifact"),
    "evaluate": ("models.cli_evaluate", "replay a CSV through an artifact's step engine and score it"),
    "broker": ("pipeline.cli_broker", "run a local broker: embedded Tansu (default) or Apache Kafka (--engine kafka)"),
    "replay": ("pipeline.cli_replay", "publish a CSV's rows as readings to a Kafka topic"),
    "serve": ("pipeline.cli_serve", "run the streaming forecasting job (Beam)"),
    "flink-cluster": (
        "pipeline.cli_flink_cluster",
        "run a local Apache Flink session cluster for the job (make flink)",
    ),
    "demo": ("pipeline.cli_demo", "local demo: broker + streaming job + replay, shown live (make run)"),
    "report": ("pipeline.cli_report", "plot live forecasts read back from Kafka against the actual readings"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnncast",
        description="Streaming time-series forecasting with recurrent networks: train offline, "
        "serve one recurrent step per reading in an Apache Beam job between Kafka topics.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if next((a for a in argv if not a.startswith("-")), None) == "serve":
        _single_threaded_blas()
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_args = extra
    try:
        return int(args._run(args) or 0)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _single_threaded_blas() -> None:
    """One OpenBLAS thread for the serving job, unless the user chose otherwise (before numpy loads).

    The job's matrix products are small (a batch of streams times a few hundred gates); OpenBLAS
    spreads them over worker threads whose spinning costs more CPU than the product: measured
    (benchmarks/step_many_micro.py) 7.6 µs per reading for a batch of 64 with one thread, 15-31 µs
    with the default. Beam runners scale by running more workers, not by threads inside one step.
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


if __name__ == "__main__":
    sys.exit(main())
