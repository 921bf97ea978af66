"""Hot swap without the job: resolving ``--artifact``, compatibility keys, and the watcher's swap/refuse rules.

Artifacts other than the session's trained one are derived from it on disk: a *retrained* copy (same
architecture, other weights, hashes rewritten, so it is a valid artifact), and copies made invalid in
the ways an operator can get wrong (a modified file, a foreign manifest, a pickle next to the model).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from models.artifact import ArtifactError, load_artifact, sha256_file
from models.reading import Reading
from models.state import UNKNOWN_MODEL
from pipeline import model_watch as mw
from pipeline.metrics import JobMetrics

import serve_harness as h


@pytest.fixture(scope="module")
def trained() -> Path:
    return h.trained_artifact()


def derive(source: Path, out: Path, *, created: str, seed: int = 1, manifest_edit=None) -> Path:
    """A copy of ``source`` with perturbed weights (a valid, compatible artifact) and a new version/created."""
    shutil.copytree(source, out)
    with np.load(out / "weights.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    rng = np.random.default_rng(seed)
    arrays = {
        name: a + rng.normal(scale=1e-3, size=a.shape) if a.dtype.kind == "f" else a for name, a in arrays.items()
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (out / "weights.npz").write_bytes(buffer.getvalue())
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(weights_sha256=sha256_file(out / "weights.npz"), created=created, version=f"{out.name}-{seed}")
    if manifest_edit is not None:
        manifest_edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out


def point(link: Path, target: Path) -> None:
    """Atomically repoints ``link`` at ``target`` (as an operator would: ln -s + rename)."""
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def swaps(metrics: JobMetrics, result: str) -> float:
    return metrics.model_swaps.labels(result=result)._value.get()


def test_resolve_an_artifact_a_link_and_a_directory_of_versions(trained: Path, tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    old = derive(trained, versions / "v1", created="2026-01-01T00:00:00Z")
    new = derive(trained, versions / "v2", created="2026-02-01T00:00:00Z")
    same_time_later_name = derive(trained, versions / "v3", created="2026-02-01T00:00:00Z")
    (versions / "v9-partial").mkdir()  # being copied: no manifest yet
    (versions / "notes.txt").write_text("not an artifact")
    assert mw.resolve_artifact(old) == old.resolve()
    link = tmp_path / "current"
    point(link, new)
    assert mw.resolve_artifact(link) == new.resolve()
    skipped: list = []
    assert mw.resolve_artifact(versions, skipped) == same_time_later_name.resolve()  # created, then name
    assert [p.name for p, _ in skipped] == ["v9-partial"]
    shutil.rmtree(same_time_later_name)
    assert mw.resolve_artifact(versions) == new.resolve()
    with pytest.raises(ArtifactError, match="no such artifact"):
        mw.resolve_artifact(tmp_path / "missing")
    with pytest.raises(ArtifactError, match="no subdirectory holds a valid"):
        mw.resolve_artifact(versions / "v9-partial")


def test_compatibility_keys(trained: Path, tmp_path: Path) -> None:
    base = mw.compatibility_key(load_artifact(trained))
    retrained = derive(trained, tmp_path / "retrained", created="2026-03-01T00:00:00Z")
    assert mw.compatibility_key(load_artifact(retrained)) == base != UNKNOWN_MODEL
    other_units = derive(
        trained,
        tmp_path / "units",
        created="2026-03-01T00:00:00Z",
        manifest_edit=lambda m: m.update(units=m["units"] * 2),
    )
    assert mw.compatibility_key(load_artifact(other_units)) != base

    def no_calendar(manifest: dict) -> None:
        manifest["features"]["calendar"] = False

    # Same shapes would not tell these apart: the feature names do.
    assert (
        mw.compatibility_key(load_artifact(derive(trained, tmp_path / "cal", created="x", manifest_edit=no_calendar)))
        != base
    )


def test_a_state_is_continued_only_by_a_model_that_can_read_it(trained: Path, tmp_path: Path) -> None:
    spec = mw.ModelSpec(str(trained))
    served = mw.load_served(trained, spec, None, 0)
    readings, covariates = h.dataset_readings(60, 1)
    state = None
    for r in readings:
        state = served.engine.step(
            state, served.reading(Reading(r.stream_id, r.timestamp, r.value, r.covariates))
        ).state
    assert state is not None and served.can_continue(state)  # no key yet (as a format-1 state): shapes fit
    stamped = state.with_source(0, 1, served.key)
    assert served.can_continue(stamped)
    assert not served.can_continue(state.with_source(0, 1, served.key ^ 1))
    other = derive(trained, tmp_path / "units", created="x", manifest_edit=lambda m: m.update(units=m["units"] * 2))
    assert not mw.load_served(other, spec, None, 1).can_continue(stamped)


def test_the_watcher_swaps_refuses_once_and_keeps_serving(trained: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="rnncast.models")
    first = derive(trained, tmp_path / "first", created="2026-01-01T00:00:00Z", seed=1)
    second = derive(trained, tmp_path / "second", created="2026-02-01T00:00:00Z", seed=2)
    link = tmp_path / "current"
    point(link, first)
    metrics = JobMetrics(CollectorRegistry())
    watcher = mw.ModelWatcher(mw.ModelSpec(str(link)), metrics)
    assert watcher.current.version == "first-1" and watcher.current.generation == 0
    assert watcher.poll() is False  # nothing changed
    point(link, second)
    assert watcher.poll() is True
    assert (watcher.current.version, watcher.current.generation) == ("second-2", 1)
    assert swaps(metrics, "loaded") == 1
    assert metrics.model_info.labels(model=watcher.current.name, version="second-2")._value.get() == 1
    assert len(list(metrics.model_info.collect()[0].samples)) == 1

    tampered = derive(trained, tmp_path / "tampered", created="2026-03-01T00:00:00Z", seed=3)
    data = bytearray((tampered / "model.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "model.keras").write_bytes(bytes(data))
    foreign = derive(
        trained,
        tmp_path / "foreign",
        created="2026-03-01T00:00:00Z",
        seed=4,
        manifest_edit=lambda m: m.update(format="something-else"),
    )
    pickled = derive(trained, tmp_path / "pickled", created="2026-03-01T00:00:00Z", seed=5)
    (pickled / "extra.pkl").write_bytes(b"\x80\x04N.")
    needs_more = derive(trained, tmp_path / "needs-more", created="2026-03-01T00:00:00Z", seed=6)
    caplog.clear()
    for bad, why in (
        (tampered, "does not match the manifest"),
        (foreign, "not an rnncast manifest"),
        (pickled, "extra.pkl"),
        (needs_more, "does not decode"),
    ):
        if bad is needs_more:
            watcher._decoded = ("temperature",)  # as if the job decoded fewer covariates than the model needs
        point(link, bad)
        for _ in range(3):  # polled again and again: refused and logged once
            assert watcher.poll() is False
        assert watcher.current.version == "second-2"
        refusals = [r for r in caplog.records if r.levelno == logging.ERROR and why in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
    assert swaps(metrics, "refused") == 4 and swaps(metrics, "loaded") == 1

    # Fixed in place (files change): tried again.
    watcher._decoded = tuple(load_artifact(trained).features.covariate_names)
    shutil.copyfile(second / "model.keras", tampered / "model.keras")
    point(link, tampered)
    assert watcher.poll() is True and watcher.current.version == "tampered-3"


def test_the_watcher_thread_follows_a_directory_of_versions(trained: Path, tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    derive(trained, versions / "v1", created="2026-01-01T00:00:00Z")
    spec = mw.ModelSpec(str(versions), poll_seconds=0.05)
    metrics = JobMetrics(CollectorRegistry())
    watcher = mw.acquire(spec, metrics)
    try:
        assert mw.acquire(spec, metrics) is watcher  # shared by every DoFn instance of the process
        mw.release(watcher)
        assert watcher.current.version == "v1-1"
        derive(trained, versions / "v2", created="2026-02-01T00:00:00Z", seed=2)
        h.wait_for(lambda: watcher.current.version == "v2-2", 10, interval=0.02, what="the swap")
        assert swaps(metrics, "loaded") == 1
    finally:
        mw.release(watcher)
    assert watcher._thread is None
    derive(trained, versions / "v3", created="2026-03-01T00:00:00Z", seed=3)
    time.sleep(0.2)
    assert watcher.current.version == "v2-2"  # stopped


def test_the_first_load_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        mw.ModelWatcher(mw.ModelSpec(str(tmp_path)))
