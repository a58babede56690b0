"""The docs' snippets are what they claim: on the monitor-only page a KServe InferenceService whose payload logger
points at the exporter's event route and a config the exporter accepts; the configuration page's example and the
README's monitor-only config load."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import ROOT


def yaml_blocks(text: str) -> list[Any]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


MONITOR_ONLY = yaml_blocks((ROOT / "docs" / "monitor-only.md").read_text())


def _monitor_only(config: dict[str, Any], demo_dir: Path, tmp_path: Path) -> Path:
    """The demo's monitor.yaml with the snippet's sections in place of its own."""
    assert "path" not in config["model"]
    shutil.copy(demo_dir / "reference_logged.csv", tmp_path / "reference_logged.csv")
    demo = yaml.safe_load((demo_dir / "monitor.yaml").read_text())
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump({**demo, **config}))
    return path


def test_the_kserve_snippet_sends_its_payloads_to_the_event_route() -> None:
    (service,) = [b for b in MONITOR_ONLY if b.get("kind") == "InferenceService"]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    logger = service["spec"]["predictor"]["logger"]
    assert logger["mode"] in {"all", "request", "response"}  # KServe's LoggerType
    assert logger["url"].endswith(":8000/log/cloudevents")
    routes = (ROOT / "exporter" / "routes.py").read_text()
    assert '"/log/cloudevents"' in routes


def test_the_config_snippet_is_a_valid_monitor_only_config(demo_dir: Path, tmp_path: Path) -> None:
    from exporter.config import load_settings
    from exporter.startup import build

    (config,) = [b for b in MONITOR_ONLY if "reference" in b]
    parts = build(load_settings(_monitor_only(config, demo_dir, tmp_path)))
    assert parts.model is None and parts.estimation is not None


def test_the_readmes_monitor_only_snippet_loads(demo_dir: Path, tmp_path: Path) -> None:
    from exporter.config import load_settings

    (config,) = yaml_blocks(section((ROOT / "README.md").read_text(), "Monitor a model served elsewhere"))
    settings = load_settings(_monitor_only(config, demo_dir, tmp_path))
    # the README's short form leaves probability_columns out: estimated quality is off, the rest is the same
    assert settings.monitor_only and settings.reference.probability_columns is None


def test_the_configuration_pages_example_loads(demo_dir: Path, tmp_path: Path) -> None:
    from exporter.config import load_settings

    (config,) = yaml_blocks((ROOT / "docs" / "configuration.md").read_text())
    for name in ("model.joblib", "reference.csv"):
        shutil.copy(demo_dir / name, tmp_path / name)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    assert not settings.monitor_only and settings.target == "species"
