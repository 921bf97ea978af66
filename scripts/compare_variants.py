#!/usr/bin/env python
"""Train and score every recurrent network on the bundled data; write a generated comparison table.

For each of rnn, lstm, gru, seq2seq, attention and birnn (default flags, horizon 48):

* train with ``rnncast train`` (a subprocess, exactly what a user runs) and time it;
* score with ``rnncast evaluate --json`` (the same evaluation code and JSON as the CLI): MAE ratio
  vs persistence and vs the seasonal naive on the held-out tail;
* time the numpy step engine per reading (``Engine.step`` over a few thousand readings, as the
  streaming job calls it) and measure a stream's state in bytes (``len(encode_state(state))``).

Writes ``benchmarks/results/compare.json`` and ``benchmarks/results/compare.md``; the table is
generated from the JSON, never typed. Exits 1 if a network does not beat both baselines.

    .venv/bin/python scripts/compare_variants.py [--cells lstm attention] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CELLS = ("rnn", "lstm", "gru", "seq2seq", "attention", "birnn")
RESULTS = ROOT / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "elecdemand.csv"))
    parser.add_argument("--horizon", type=int, default=48)
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    parser.add_argument("--serving-readings", type=int, default=3000, help="readings timed per repeat (default: 3000)")
    parser.add_argument("--keep", help="keep the trained artifacts under this directory")
    parser.add_argument("--out", default=str(RESULTS), help="directory for compare.json and compare.md")
    args = parser.parse_args(argv)

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rnncast-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    rows = []
    for cell in args.cells:
        artifact = workdir / cell
        print(f"== {cell}: training", file=sys.stderr, flush=True)
        train_wall, train_cpu = _cli(["train", "--data", args.data, "--out", str(artifact), "--cell", cell, "--horizon", str(args.horizon)])
        report = json.loads(_cli_output(["evaluate", "--artifact", str(artifact), "--data", args.data, "--json"]))
        manifest = json.loads((artifact / "manifest.json").read_text())
        serving = serving_cost(artifact, args.data, args.serving_readings)
        summary = report["summary"]
        rows.append(
            {
                "cell": cell,
                "network": manifest.get("network", {}),
                "mae_ratio_vs_persistence": summary["mae_ratio_vs_persistence"],
                "mae_ratio_vs_seasonal_naive": summary["mae_ratio_vs_seasonal_naive"],
                "beats_both_baselines": summary["mae_ratio_vs_persistence"] < 1 and summary["mae_ratio_vs_seasonal_naive"] < 1,
                "mase": report.get("model", {}).get("mase_mean", _mean(report["model"].get("mase", []))),
                "test_points": report["test_points"],
                "train_seconds": manifest["training"]["seconds"],
                "train_wall_seconds": round(train_wall, 1),
                "train_cpu_seconds": round(train_cpu, 1),
                "epochs_run": manifest["training"]["epochs_run"],
                "best_val_loss": manifest["validation"]["val_loss"],
                "parity_max_abs_diff": manifest["parity"]["max_abs_diff"],
                "parity_float64_max_abs_diff": manifest["parity"].get("float64_max_abs_diff"),
                **serving,
                "model_version": manifest["version"],
            }
        )
        print(f"   {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
        if not args.keep:
            _remove_tree(artifact)

    result = {
        "generated_by": "scripts/compare_variants.py",
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": str(Path(args.data).resolve().relative_to(ROOT)) if Path(args.data).resolve().is_relative_to(ROOT) else args.data,
        "horizon": args.horizon,
        "flags": "defaults (rnncast train --cell CELL --horizon H)",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "git_commit": _git_commit(),
        "results": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "compare.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(r["beats_both_baselines"] for r in rows) else 1


def serving_cost(artifact_dir: Path, data: str, readings: int, repeats: int = 3) -> dict:
    """Median µs per ``Engine.step`` after the warm-up, and the stream state's size in bytes."""
    from models.artifact import load_artifact
    from models.data import load_csv
    from models.evaluation import covariate_columns
    from models.reading import Reading
    from models.state import encode_state

    artifact = load_artifact(artifact_dir)
    engine = artifact.engine()
    dataset = load_csv(data)
    sid, series = next(iter(dataset.series.items()))
    columns = covariate_columns(engine, dataset)
    items = [
        Reading(sid, float(t), float(v), tuple(float(c) for c in cov))
        for t, v, cov in zip(series.timestamps, series.values, series.covariates[:, columns])
    ]
    warm = artifact.season + 1
    items = items[: warm + readings]
    per_reading = []
    state = None
    for _ in range(repeats):
        state = None
        for item in items[:warm]:
            state = engine.step(state, item).state
        clock = time.perf_counter()
        for item in items[warm:]:
            state = engine.step(state, item).state
        per_reading.append((time.perf_counter() - clock) / (len(items) - warm) * 1e6)
    return {
        "serving_us_per_reading": round(statistics.median(per_reading), 1),
        "serving_readings_timed": len(items) - warm,
        "state_floats": int(state.cell_state.size),
        "state_bytes": len(encode_state(state)),
    }


def markdown(result: dict) -> str:
    lines = [
        "# Recurrent networks compared on the bundled data",
        "",
        f"Generated by `{result['generated_by']}` on {result['started']} (commit {result['git_commit'][:10]}); "
        f"data `{result['data']}`, horizon {result['horizon']}, {result['flags']}. "
        f"Machine: {result['machine']['cpus']} CPUs, load average {result['machine']['load_average_at_end']} at the end "
        "(the machine is shared: timings are indicative).",
        "",
        "MAE ratios are mean MAE over the 48 horizons of the held-out tail (`rnncast evaluate --json`, "
        "`summary`); below 1 beats the baseline. Serving is the numpy `Engine.step` per reading "
        "(median of 3 runs); state is `len(encode_state(state))` for one stream.",
        "",
        "| network | hyperparameters | MAE / persistence | MAE / seasonal naive | beats both | train s (epochs) | train CPU s | serving µs/reading | state bytes | parity max abs diff (float32 Keras; float64 twin) |",
        "|---|---|---:|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        parity = f"{r['parity_max_abs_diff']:.1e}"
        if r.get("parity_float64_max_abs_diff") is not None:
            parity += f"; {r['parity_float64_max_abs_diff']:.0e}"
        hyper = ", ".join(f"{k}={v}" for k, v in r["network"].items() if k not in ("step_seconds", "calendar", "decoder_cell")) or "—"
        lines.append(
            f"| {r['cell']} | {hyper} | {r['mae_ratio_vs_persistence']:.3f} | {r['mae_ratio_vs_seasonal_naive']:.3f} | "
            f"{'yes' if r['beats_both_baselines'] else '**no**'} | {r['train_seconds']:.0f} ({r['epochs_run']}) | "
            f"{r['train_cpu_seconds']:.0f} | {r['serving_us_per_reading']:.0f} | {r['state_bytes']:,} | {parity} |"
        )
    return "\n".join(lines) + "\n"


def _cli(args: list[str]) -> tuple[float, float]:
    """Run ``rnncast ARGS``; (wall seconds, CPU seconds user+system of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock = time.monotonic()
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=_env(), check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - clock
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _cli_output(args: list[str]) -> str:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=_env(), check=True, capture_output=True, text=True
    ).stdout


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _mean(values) -> float | None:
    return float(statistics.fmean(values)) if values else None


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    path.rmdir()


if __name__ == "__main__":
    sys.exit(main())
