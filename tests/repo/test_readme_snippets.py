"""The README's monitor-only snippets are what they claim: a KServe InferenceService whose payload logger points at
the exporter's event route, and a config the exporter accepts."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()
SECTION = README.split("\n## Monitor a model served elsewhere\n", 1)[1].split("\n## ", 1)[0]
YAML_BLOCKS = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", SECTION, re.S)]


def test_the_kserve_snippet_sends_its_payloads_to_the_event_route() -> None:
    (service,) = [b for b in YAML_BLOCKS if b.get("kind") == "InferenceService"]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    logger = service["spec"]["predictor"]["logger"]
    assert logger["mode"] in {"all", "request", "response"}  # KServe's LoggerType
    assert logger["url"].endswith(":8000/log/cloudevents")
    routes = (ROOT / "exporter" / "routes.py").read_text()
    assert '"/log/cloudevents"' in routes


def test_the_config_snippet_is_a_valid_monitor_only_config(demo_dir: Path, tmp_path: Path) -> None:
    from exporter.config import load_settings
    from exporter.startup import build

    (config,) = [b for b in YAML_BLOCKS if "reference" in b]
    assert "path" not in config["model"]
    shutil.copy(demo_dir / "reference_logged.csv", tmp_path / "reference_logged.csv")
    demo = yaml.safe_load((demo_dir / "monitor.yaml").read_text())
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump({**demo, **config}))
    parts = build(load_settings(path))
    assert parts.model is None and parts.estimation is not None
