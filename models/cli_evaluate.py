"""``rnncast evaluate``: stream a CSV through an artifact's engine, as the job would, and score it."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Replay every stream of a CSV through the artifact's step engine from its first reading "
        "(state carried, exactly as the streaming job does) and score the forecasts issued in the "
        "test part against persistence and the seasonal naive on the same points. With an artifact "
        "that has prediction intervals, also their coverage, mean width and interval (Winkler) score per "
        "horizon band, next to a baseline interval (the seasonal naive widened by its own error "
        "quantiles before the test part)."
    )
    parser.add_argument("--artifact", required=True, help="artifact directory written by `rnncast train`")
    parser.add_argument("--data", required=True, help="CSV to evaluate on (long format)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument(
        "--test-fraction",
        type=float,
        help="score the last fraction of each stream (default: the artifact's training hold-out)",
    )
    split.add_argument("--test-from", help="score forecasts issued at or after this time (RFC 3339 or epoch seconds)")
    parser.add_argument(
        "--engine",
        choices=("numpy", "keras"),
        default="numpy",
        help="numpy (what serving runs) or keras (reference, slow)",
    )
    parser.add_argument("--season", type=int, help="season for the seasonal naive baseline (default: the artifact's)")
    parser.add_argument(
        "--peer",
        choices=("none", "mstl", "auto_ets", "holt_winters"),
        default="none",
        help="also score a statistical forecaster of statsforecast (an optional extra: pip install -r "
        "requirements-accuracy.txt) on the same origins: mstl (the model's cycles), auto_ets or holt_winters. It is "
        "fitted on the data before the test part and applied at each origin to the history up to it; MSTL costs "
        "seconds per origin, hence --peer-origins (default: none)",
    )
    parser.add_argument(
        "--peer-origins",
        type=int,
        default=30,
        help="origins per stream the peer is scored on, every k-th of the test part (default: 30)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write forecast-vs-actual and MAE-per-horizon plots, and a fan chart of the prediction intervals when the artifact has them",
    )
    parser.add_argument("--plot-stream", help="stream to plot (default: the first)")


def run(args: argparse.Namespace) -> int:
    from models.artifact import ArtifactError, load_artifact
    from models.data import DataError, load_csv
    from models.errors import UsageError
    from models.evaluation import evaluate
    from models.metrics import format_report
    from models.timeutil import parse_timestamp

    try:
        artifact = load_artifact(args.artifact)
        dataset = load_csv(args.data)
    except (ArtifactError, DataError) as err:
        raise UsageError(str(err)) from None
    test_from = None
    if args.test_from is not None:
        try:
            test_from = parse_timestamp(args.test_from)
        except ValueError as err:
            raise UsageError(f"--test-from: {err}") from None
    test_fraction = args.test_fraction
    if test_from is None and test_fraction is None:
        test_fraction = artifact.manifest["training"]["config"]["test_fraction"]
    if engine_step_mismatch(artifact, dataset):
        raise UsageError(
            f"{args.data}: sampling step {engine_step_mismatch(artifact, dataset)} s differs from the model's {artifact.step_seconds} s"
        )
    if args.engine == "keras":
        from models.reference_engine import reference_engine

        engine = reference_engine(artifact)
    else:
        engine = artifact.engine()
    season = args.season or artifact.season
    total = sum(len(s.timestamps) for s in dataset.series.values())
    progress = _progress(total, disable=args.json)
    try:
        report, streams = evaluate(engine, dataset, season, test_fraction, test_from, on_reading=progress.update_one)
    except ValueError as err:
        raise UsageError(str(err)) from None
    finally:
        progress.close()
    report["engine"] = args.engine
    report["model_version"] = artifact.version
    if args.peer != "none":
        from models.peers import PeersUnavailable, peer_report

        if args.peer_origins < 1:
            raise UsageError("--peer-origins must be at least 1")
        try:
            report["peer"] = peer_report(
                streams, args.peer, artifact.smoothing.seasons, artifact.horizon, season, args.peer_origins
            )
        except PeersUnavailable as err:
            raise UsageError(f"--peer {args.peer}: {err}") from None
    if args.plot:
        from models.plots import plot_evaluation

        chosen = next((s for s in streams if s.stream_id == (args.plot_stream or s.stream_id)), None)
        if chosen is None:
            raise UsageError(f"--plot-stream {args.plot_stream!r} is not in {args.data}")
        plot_evaluation(
            args.plot,
            stream_id=chosen.stream_id,
            timestamps=chosen.series.timestamps,
            values=chosen.series.values,
            forecasts=chosen.forecasts,
            step_seconds=chosen.series.step_seconds,
            report=report,
            test_from=chosen.test_from,
            lower=chosen.lower,
            upper=chosen.upper,
            interval_levels=() if engine.intervals is None else engine.intervals.levels,
        )
    if args.json:
        print(json.dumps(report))
    else:
        print(f"model {artifact.cell} {artifact.version} on {args.data} ({args.engine} engine)")
        print(format_report(report))
        if "peer" in report:
            from models.peers import format_peer_report

            print()
            print(format_peer_report(report["peer"]))
        else:
            print("(a strong statistical peer on the same origins: --peer mstl)")
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def engine_step_mismatch(artifact, dataset) -> float | None:
    for series in dataset.series.values():
        if abs(series.step_seconds - artifact.step_seconds) > 1e-9:
            return series.step_seconds
    return None


class _progress:
    """A tqdm bar on stderr when it is a terminal, updated every 1,000 readings (cheap)."""

    def __init__(self, total: int, disable: bool):
        self._count = 0
        self._bar = None
        if not disable and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="reading", file=sys.stderr)

    def update_one(self) -> None:
        self._count += 1
        if self._bar is not None and self._count % 1000 == 0:
            self._bar.update(1000)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._count % 1000)
            self._bar.close()
