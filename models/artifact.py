"""The trained-model artifact: a directory with ``model.keras``, ``weights.npz`` and ``manifest.json``.

``weights.npz`` holds the same weights in the numpy engine's layout, so serving never imports
TensorFlow; both files are pinned by SHA-256 in the manifest and checked on every load. Nothing is
ever unpickled: ``np.load(..., allow_pickle=False)`` and Keras ``safe_mode=True``.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.cells import NetworkWeights
from models.engine import Engine, EngineConfig
from models.features import FeatureSpec
from models.intervals import IntervalSpec
from models.networks import NETWORK_TYPES, Network, network_from_arrays
from models.smoothing import Smoothing

ARTIFACT_FORMAT = "rnncast-artifact"
ARTIFACT_FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
WEIGHTS_FILE = "weights.npz"
MANIFEST_FILE = "manifest.json"
_REFUSED_SUFFIXES = (".h5", ".hdf5", ".pkl", ".pickle", ".joblib", ".npy")


class ArtifactError(Exception):
    """An artifact that must not be served; the message says which file and why."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict
    weights: NetworkWeights | Network  # NetworkWeights for rnn/lstm/gru, a models.variants network otherwise
    features: FeatureSpec
    intervals: IntervalSpec | None = None  # None: an artifact trained before intervals existed

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def cell(self) -> str:
        return self.manifest["cell"]

    @property
    def horizon(self) -> int:
        return int(self.manifest["horizon"])

    @property
    def season(self) -> int:
        return int(self.manifest["season"])

    @property
    def step_seconds(self) -> float:
        return float(self.manifest["step_seconds"])

    @property
    def smoothing(self) -> Smoothing:
        """The level and cycles the network corrects (the seasonal naive for artifacts made before smoothing)."""
        if "smoothing" in self.manifest:
            return Smoothing.from_json(self.manifest["smoothing"])
        return Smoothing.seasonal_naive(self.season)

    def engine_config(self, min_history: int | None = None, max_gap: int | None = None) -> EngineConfig:
        serving = self.manifest["serving"]
        return EngineConfig(
            season=self.season,
            step_seconds=self.step_seconds,
            min_history=int(min_history if min_history is not None else serving["min_history"]),
            max_gap=int(max_gap if max_gap is not None else serving["max_gap"]),
            smoothing=self.smoothing,
        )

    def engine(self, min_history: int | None = None, max_gap: int | None = None) -> Engine:
        return Engine(self.weights, self.features, self.engine_config(min_history, max_gap), self.intervals)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_artifact(directory: Path, keras_model, weights: NetworkWeights | Network, manifest: dict) -> Path:
    """Write the model, its numpy weights and the manifest (hashes filled in here)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keras_model.save(directory / MODEL_FILE)
    buffer = io.BytesIO()
    np.savez(buffer, **weights.to_arrays())
    (directory / WEIGHTS_FILE).write_bytes(buffer.getvalue())
    manifest = dict(manifest)
    manifest.update(
        format=ARTIFACT_FORMAT,
        format_version=ARTIFACT_FORMAT_VERSION,
        model_file=MODEL_FILE,
        model_sha256=sha256_file(directory / MODEL_FILE),
        weights_file=WEIGHTS_FILE,
        weights_sha256=sha256_file(directory / WEIGHTS_FILE),
    )
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return directory


def read_manifest(directory: Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: not an artifact directory")
    refused = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in _REFUSED_SUFFIXES)
    if refused:
        raise ArtifactError(
            f"{directory}: refusing an artifact that contains {', '.join(refused)} (only .keras and .npz weights are accepted; no HDF5 models, no pickles)"
        )
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing (is {directory} an rnncast artifact?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path}: not an rnncast manifest (format must be {ARTIFACT_FORMAT!r})")
    if manifest.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {manifest.get('format_version')} is not supported")
    if manifest.get("cell") not in NETWORK_TYPES:
        raise ArtifactError(f"{path}: unknown cell {manifest.get('cell')!r}")
    if not str(manifest.get("model_file", "")).endswith(".keras"):
        raise ArtifactError(f"{path}: model_file must be a .keras file, got {manifest.get('model_file')!r}")
    return manifest


def _check_hash(directory: Path, name: str, expected: str | None) -> Path:
    path = directory / name
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactError(
            f"{path}: SHA-256 {actual[:12]}… does not match the manifest's {str(expected)[:12]}…; refusing to load a modified model"
        )
    return path


def load_artifact(directory: Path) -> Artifact:
    """Load what serving needs (numpy weights, features, semantics) after checking hashes. No TensorFlow."""
    directory = Path(directory).resolve()
    manifest = read_manifest(directory)
    _check_hash(directory, manifest["model_file"], manifest.get("model_sha256"))
    weights_path = _check_hash(directory, manifest.get("weights_file", WEIGHTS_FILE), manifest.get("weights_sha256"))
    try:
        with np.load(weights_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        weights = network_from_arrays(manifest["cell"], arrays, manifest.get("network"))
        features = FeatureSpec.from_json(manifest["features"])
    except (ValueError, KeyError, OSError) as err:
        raise ArtifactError(f"{weights_path}: unreadable weights ({err})") from None
    if weights.horizon != int(manifest["horizon"]):
        raise ArtifactError(
            f"{weights_path}: head has {weights.horizon} outputs, manifest says horizon {manifest['horizon']}"
        )
    intervals = None
    if manifest.get("intervals") is not None:
        try:
            intervals = IntervalSpec.from_json(manifest["intervals"], weights.horizon)
        except ValueError as err:
            raise ArtifactError(f"{directory / MANIFEST_FILE}: {err}") from None
    return Artifact(directory, manifest, weights, features, intervals)


def load_keras_model(artifact: Artifact):
    """The Keras model, hash-checked, refused if it holds Lambda layers, loaded with safe_mode=True."""
    import keras

    import models.keras_layers  # noqa: F401  (registers the variants' layers before loading)

    path = _check_hash(artifact.path, artifact.manifest["model_file"], artifact.manifest.get("model_sha256"))
    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode("utf-8")
    except (zipfile.BadZipFile, KeyError) as err:
        raise ArtifactError(f"{path}: not a Keras v3 archive ({err})") from None
    if '"class_name": "Lambda"' in config or '"Lambda"' in config:
        raise ArtifactError(f"{path}: contains a Lambda layer (arbitrary code); refusing to load")
    return keras.saving.load_model(path, safe_mode=True, compile=False)
