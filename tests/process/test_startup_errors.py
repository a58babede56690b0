"""`exporter serve` refuses to start on a model, reference or config it cannot use: the process exits non-zero
with the problem and the file named on stderr, in one line, without a traceback. These need the process: what is
asserted is the command's exit status and what it prints before it exits."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import joblib
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from tests.helpers import config_folder, population, write_config


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    """``exporter serve`` on ``config``, expected to exit at once (bounded: a server that starts fails the test when
    the timeout ends it)."""
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--port", "1"],
        capture_output=True, text=True, timeout=120,
    )


def test_model_that_does_not_fit_the_columns_refuses_to_start_with_prediction_column(tmp_path: Path) -> None:
    """With the reference's predictions given (so the model is not asked to predict the reference), the request-path
    check still finds a model that cannot predict on the configured features."""
    reference = population(300, seed=6)
    other = reference.rename(columns={"x": "size"})  # trained on other column names
    model = make_pipeline(ColumnTransformer([("num", "passthrough", ["size"])]), LogisticRegression())
    joblib.dump(model.fit(other[["size"]], other["label"]), tmp_path / "model.joblib")
    reference["prediction"] = model.predict(other[["size"]])
    reference.to_csv(tmp_path / "ref.csv", index=False)
    config = write_config(tmp_path, extra="", categorical="[grade]")
    text = config.read_text().replace("reference: {path: ref.csv, ",
                                      "reference: {path: ref.csv, prediction_column: prediction, ")
    assert text != config.read_text()
    config.write_text(text)
    proc = serve(config)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("exporter: error:")]
    assert len(lines) == 1, proc.stderr
    error = lines[0]
    assert "the model cannot predict on the reference's configured features" in error and "size" in error


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "model.joblib").unlink(), "model file not found"),
        (lambda d: (d / "model.joblib").write_text("not a pickle"), "cannot load model"),
        (lambda d: (d / "reference.csv").unlink(), "reference file not found"),
        (lambda d: (d / "reference.csv").write_text("island,sex\nDream,male\n"), "lacks configured feature"),
        (lambda d: (d / "config.yaml").write_text("model: {path: model.joblib}\n"), "invalid config"),
        (lambda d: (d / "config.yaml").write_text("model: [unclosed\n"), "cannot read config"),
    ],
)
def test_startup_errors_name_the_file_and_exit_non_zero(
    demo_dir: Path, tmp_path: Path, mutate: Callable[[Path], object], message: str
) -> None:
    config = config_folder(demo_dir, tmp_path)
    mutate(tmp_path)
    proc = serve(config)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert str(tmp_path) in proc.stderr
