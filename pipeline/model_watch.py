"""Which model the job serves, and replacing it while the job runs (hot swap).

``rnncast serve --artifact PATH`` watches PATH, which is one of

* an artifact directory (``manifest.json`` in it),
* a symbolic link to one (e.g. ``/artifacts/current -> v7``): repointing the link swaps the model,
* a directory of versioned artifact directories (``/artifacts/{v6,v7,...}``): the newest valid one is
  served, by the manifest's ``created`` time, then by directory name; subdirectories without a
  readable rnncast manifest (e.g. one still being copied) are skipped.

:class:`ModelWatcher` re-resolves PATH every ``--artifact-poll-seconds`` on a thread of its own. When
the resolved directory or its manifest's ``model_sha256`` changed, it loads the new artifact with
:func:`models.artifact.load_artifact` (both hashes checked, nothing unpickled) off the processing
thread and publishes it as one immutable :class:`Served` value: the stateful step reads
:attr:`ModelWatcher.current` once per element, so a swap happens between elements. An artifact that
fails to load (hash mismatch, wrong format, refused files, a horizon or ``--min-history`` it cannot
serve, covariates the job does not decode) is refused: logged once, counted in
``rnncast_model_swaps_total{result="refused"}``, and the current model keeps serving. It is tried
again only when its files change.

Which stream states survive a swap: each state records the :func:`compatibility_key` of the model
that produced it (:attr:`models.state.StreamState.model_key`). A model with the same key (same cell,
layers, units, state size, network block, season, step, horizon and feature names; e.g. the same
architecture retrained with another seed or on newer data) continues the states; any other model
restarts each stream's warm-up at its next reading (``rnncast_stream_resets_total{reason="model_swap"}``).
The same check applies to states restored from the changelog after a restart, so a job restarted on
another model never feeds it a state it cannot read. States with no key (format 1, written before
keys existed) are continued when their shapes fit.

One watcher is shared by every stateful DoFn instance of the process that serves the same
:class:`ModelSpec` (:func:`acquire` / :func:`release`), so a swap is loaded, logged and counted once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.artifact import MANIFEST_FILE, Artifact, ArtifactError, load_artifact, read_manifest
from models.engine import Engine
from models.reading import Reading
from models.state import UNKNOWN_MODEL, StreamState

__all__ = [
    "ModelSpec",
    "ModelWatcher",
    "Served",
    "acquire",
    "compatibility_key",
    "load_served",
    "release",
    "resolve_artifact",
]

log = logging.getLogger("rnncast.models")


@dataclass(frozen=True)
class ModelSpec:
    """What to serve, as a small picklable description.

    Attributes:
        location: ``--artifact``: an artifact directory, a link to one, or a directory of versions.
        min_history: ``--min-history`` (None: each artifact's own).
        max_gap: ``--max-gap`` (None: each artifact's own).
        poll_seconds: ``--artifact-poll-seconds``; None or 0: never look again.
        covariates: The covariates the job decodes from readings, in order (None: the first model's).
    """

    location: str
    min_history: int | None = None
    max_gap: int | None = None
    poll_seconds: float | None = None
    covariates: tuple[str, ...] | None = None


@dataclass(frozen=True, eq=False)
class Served:
    """One loaded model, immutable: what the stateful step uses for one element.

    Attributes:
        engine: The step engine.
        name: The model name in forecast messages (the artifact's cell).
        version: The artifact's version id (forecast messages' ``model_version``).
        key: :func:`compatibility_key` of the artifact.
        path: The resolved artifact directory.
        model_sha256: The manifest's model hash.
        covariate_columns: For each covariate of the model, its index in the decoded readings' covariates
            (None: the same order, nothing to rearrange).
        generation: 0 for the model loaded at start, +1 per swap.
    """

    engine: Engine
    name: str
    version: str
    key: int
    path: Path
    model_sha256: str
    covariate_columns: tuple[int, ...] | None
    generation: int
    ring_size: int  # the smoothing's seasonal components per stream (the season, for one cycle)
    state_size: int

    @property
    def horizon(self) -> int:
        return self.engine.horizon

    @property
    def step_seconds(self) -> float:
        return self.engine.config.step_seconds

    def can_continue(self, state: StreamState) -> bool:
        """Whether this model may continue ``state`` (see the module docstring)."""
        if len(state.ring) != self.ring_size or len(state.cell_state) != self.state_size:
            return False
        return state.model_key == self.key or state.model_key == UNKNOWN_MODEL

    def reading(self, reading: Reading) -> Reading:
        """``reading`` with the covariates this model needs, in its order."""
        if self.covariate_columns is None:
            return reading
        covariates = reading.covariates
        return Reading(
            reading.stream_id, reading.timestamp, reading.value, tuple(covariates[i] for i in self.covariate_columns)
        )


def compatibility_key(artifact: Artifact) -> int:
    """A 64-bit key equal for artifacts whose stream states are interchangeable (never 0)."""
    manifest = artifact.manifest
    fields = {
        "cell": manifest["cell"],
        "layers": manifest.get("layers"),
        "units": manifest.get("units"),
        "network": manifest.get("network"),
        "state_size": int(artifact.weights.state_size),
        "season": artifact.season,
        "step_seconds": repr(float(artifact.step_seconds)),
        "horizon": artifact.horizon,
        "features": list(artifact.features.names),
    }
    if "smoothing" in manifest:  # older artifacts keep their keys
        fields["smoothing_seasons"] = list(manifest["smoothing"]["seasons"])
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") or 1


def _candidates(directory: Path) -> tuple[list[tuple[str, str, Path]], list[tuple[Path, str]]]:
    """Valid artifact subdirectories as (created, name, resolved path), and the skipped ones with why."""
    valid, skipped = [], []
    try:
        children = sorted(directory.iterdir())
    except OSError as err:
        raise ArtifactError(f"{directory}: cannot list ({err.strerror or err})") from None
    for child in children:
        if not child.is_dir():
            continue
        try:
            manifest = read_manifest(child)
        except ArtifactError as err:
            skipped.append((child, str(err)))
            continue
        valid.append((str(manifest.get("created", "")), child.name, child.resolve()))
    return valid, skipped


def resolve_artifact(location: str | os.PathLike[str], skipped: list[tuple[Path, str]] | None = None) -> Path:
    """The artifact directory that ``location`` means now (links resolved).

    Args:
        location: An artifact directory, a link to one, or a directory of artifact directories.
        skipped: If given, receives (directory, why) for versions that were passed over.

    Raises:
        ArtifactError: If ``location`` holds no artifact.
    """
    path = Path(location)
    if (path / MANIFEST_FILE).exists():
        return path.resolve()
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such artifact directory")
    valid, passed_over = _candidates(path)
    if skipped is not None:
        skipped.extend(passed_over)
    if not valid:
        raise ArtifactError(
            f"{path}: not an artifact directory (no {MANIFEST_FILE}) and no subdirectory holds a valid rnncast artifact"
        )
    return max(valid)[2]


def load_served(path: Path, spec: ModelSpec, decoded: tuple[str, ...] | None, generation: int) -> Served:
    """Loads the artifact at ``path`` (hash-checked) for serving.

    Args:
        decoded: The covariates readings are decoded with (None: this model's own).

    Raises:
        ArtifactError: If the artifact cannot be served (the message says why).
    """
    artifact = load_artifact(path)
    try:
        engine = artifact.engine(spec.min_history, spec.max_gap)
    except ValueError as err:
        raise ArtifactError(f"{path}: {err}") from None
    needed = tuple(artifact.features.covariate_names)
    columns = None
    if decoded is not None and needed != tuple(decoded):
        missing = [name for name in needed if name not in decoded]
        if missing:
            raise ArtifactError(
                f"{path}: the model needs covariate(s) {', '.join(missing)} that this job does not decode "
                f"(it decodes {', '.join(decoded) or 'none'}); restart the job to serve it"
            )
        columns = tuple(decoded.index(name) for name in needed)
    return Served(
        engine,
        artifact.cell,
        artifact.version,
        compatibility_key(artifact),
        artifact.path,
        str(artifact.manifest.get("model_sha256")),
        columns,
        generation,
        engine.ring_size,
        int(engine.weights.state_size),
    )


def _file_signature(path: Path) -> tuple:
    """What identifies one state of an artifact directory's files (to retry a refused one after it changed)."""
    parts: list[Any] = [str(path)]
    for name in sorted(os.listdir(path)) if path.is_dir() else ():
        try:
            stat = (path / name).stat()
        except OSError:
            continue
        parts.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(parts)


class ModelWatcher:
    """Serves the model at ``spec.location`` and follows it (see the module docstring).

    The first load happens in the constructor and raises :class:`~models.artifact.ArtifactError`
    if nothing servable is there; later loads never raise (a failure is a refusal).

    Args:
        spec: What to serve and how often to look.
        metrics: A :class:`~pipeline.metrics.JobMetrics` (model_info, model_swaps), or None.
    """

    def __init__(self, spec: ModelSpec, metrics: Any = None) -> None:
        self.spec = spec
        self._metrics = metrics
        path = resolve_artifact(spec.location)
        self._decoded = spec.covariates
        self.current: Served = load_served(path, spec, self._decoded, 0)
        if self._decoded is None:
            self._decoded = tuple(self.current.engine.features.covariate_names)
        self._refused: set[tuple] = set()
        self._skipped: set[tuple[str, str]] = set()
        self._lock = threading.Lock()  # one poll at a time (thread and direct calls)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if metrics is not None:
            metrics.set_model(self.current.name, self.current.version)

    # --- polling --------------------------------------------------------------------------------

    def poll(self) -> bool:
        """Looks at the location once; returns True if a new model is now served."""
        with self._lock:
            return self._poll()

    def _poll(self) -> bool:
        skipped: list[tuple[Path, str]] = []
        try:
            path = resolve_artifact(self.spec.location, skipped)
            manifest_sha = self._manifest_sha(path)
        except ArtifactError as err:
            self._note_skipped(skipped)
            self._refuse(("location", str(err)), str(err))
            return False
        self._note_skipped(skipped)
        current = self.current
        if path == current.path and manifest_sha == current.model_sha256:
            return False
        signature = _file_signature(path)
        if signature in self._refused:
            return False
        try:
            served = load_served(path, self.spec, self._decoded, current.generation + 1)
        except ArtifactError as err:
            self._refuse(signature, str(err))
            return False
        except Exception as err:
            self._refuse(signature, f"{path}: cannot load ({type(err).__name__}: {err})")
            return False
        self.current = served  # one reference assignment: the stateful step sees the old or the new model
        compatible = served.key == current.key
        log.info(
            "now serving %s %s from %s (was %s %s); stream states %s",
            served.name,
            served.version,
            served.path,
            current.name,
            current.version,
            "are continued (compatible model)"
            if compatible
            else "restart their warm-up at their next reading (incompatible model)",
        )
        if self._metrics is not None:
            self._metrics.model_swap("loaded")
            self._metrics.set_model(served.name, served.version)
        return True

    @staticmethod
    def _manifest_sha(path: Path) -> str:
        try:
            return str(json.loads((path / MANIFEST_FILE).read_text()).get("model_sha256"))
        except (OSError, ValueError, AttributeError) as err:
            raise ArtifactError(f"{path / MANIFEST_FILE}: unreadable ({err})") from None

    def _refuse(self, signature: tuple, reason: str) -> None:
        if signature in self._refused:
            return
        self._refused.add(signature)
        log.error(
            "refusing the model artifact: %s; still serving %s %s", reason, self.current.name, self.current.version
        )
        if self._metrics is not None:
            self._metrics.model_swap("refused")

    def _note_skipped(self, skipped: list[tuple[Path, str]]) -> None:
        for path, why in skipped:
            if (str(path), why) not in self._skipped:
                self._skipped.add((str(path), why))
                log.warning("skipping %s in %s: %s", path.name, self.spec.location, why)

    # --- the thread -------------------------------------------------------------------------------

    def start(self) -> None:
        """Polls every ``spec.poll_seconds`` on a daemon thread (nothing if polling is off)."""
        if not self.spec.poll_seconds or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="rnncast-model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        assert self.spec.poll_seconds
        while not self._stop.wait(self.spec.poll_seconds):
            try:
                self.poll()
            except Exception:
                log.exception("watching %s failed once; still serving %s", self.spec.location, self.current.version)


_WATCHERS: dict[ModelSpec, list[Any]] = {}  # spec -> [watcher, users]
_WATCHERS_LOCK = threading.Lock()


def acquire(spec: ModelSpec, metrics: Any = None) -> ModelWatcher:
    """The process's watcher for ``spec`` (created, loaded and started by its first user)."""
    with _WATCHERS_LOCK:
        entry = _WATCHERS.get(spec)
        if entry is None:
            watcher = ModelWatcher(spec, metrics)
            watcher.start()
            entry = _WATCHERS[spec] = [watcher, 0]
        entry[1] += 1
        return entry[0]


def release(watcher: ModelWatcher) -> None:
    """One user less; the last one stops the watcher's thread."""
    with _WATCHERS_LOCK:
        entry = _WATCHERS.get(watcher.spec)
        if entry is None or entry[0] is not watcher:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _WATCHERS[watcher.spec]
            watcher.stop()
