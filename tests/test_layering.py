"""Dependencies point one way: pipeline -> models, and the numerical core imports numpy only."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = [
    "intervals",
    "online_accuracy",
    "cells",
    "engine",
    "features",
    "scaling",
    "state",
    "reading",
    "sequences",
    "metrics",
    "timeutil",
    "data",
    "evaluation",
    "errors",
]
FORBIDDEN_IN_CORE = {"tensorflow", "keras", "apache_beam", "kafka", "prometheus_client", "pipeline", "pickle"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", CORE)
def test_numerical_core_is_pure(module):
    assert not imported_modules(ROOT / "models" / f"{module}.py") & FORBIDDEN_IN_CORE


@pytest.mark.parametrize("path", sorted((ROOT / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_never_import_pipeline(path):
    assert "pipeline" not in imported_modules(path)


def test_no_pickle_anywhere():
    for package in ("models", "pipeline"):
        for path in (ROOT / package).rglob("*.py"):
            assert "pickle" not in imported_modules(path), path


def test_serving_never_imports_tensorflow():
    """The artifact loader used by serving reads numpy weights; Keras stays out of the job."""
    import subprocess
    import sys

    code = (
        "import sys; from models.artifact import load_artifact; import models.engine;"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, sorted(m for m in sys.modules if 'keras' in m or 'tensorflow' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
