"""The dashboards against Grafana's own dashboard model (grafana-foundation-sdk, generated from Grafana 11.6's
schemas): each file decodes into the model and encodes back unchanged, so a field Grafana would drop or read
otherwise (a misspelt key, a value of the wrong type) fails here, where Grafana itself cannot run."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.dashboards import DASHBOARDS as SHIPPED

DASHBOARDS = sorted(SHIPPED)  # the files Grafana is provisioned with
# Fields the model does not carry, each looked at: the numeric id (null in provisioned files: Grafana assigns it),
# the built-in annotation's flag and a query variable's display copy of its query (both rebuilt by Grafana).
ALLOWED = ({"id"}, "builtIn", "definition")


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Where ``after`` (the model's encoding) lost or changed what ``before`` held."""
    out: list[str] = []
    if isinstance(before, dict) and isinstance(after, dict):
        for key, value in before.items():
            where = f"{path}.{key}"
            if key not in after:
                allowed = (path == "" and key in ALLOWED[0]) or (key == "builtIn" and ".annotations" in path) or (
                    key == "definition" and ".templating" in path)
                if not allowed and value is not None:
                    out.append(f"dropped {where}")
            else:
                out += differences(value, after[key], where)
    elif isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            out.append(f"length of {path}: {len(before)} -> {len(after)}")
        for i, (a, b) in enumerate(zip(before, after, strict=False)):
            out += differences(a, b, f"{path}[{i}]")
    elif before != after and not (isinstance(before, (int, float)) and isinstance(after, (int, float))
                                  and float(before) == float(after)):
        out.append(f"changed {path}: {before!r} -> {after!r}")
    return out


def round_trip(doc: dict[str, Any]) -> dict[str, Any]:
    return json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(copy.deepcopy(doc))))


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_the_dashboard_is_grafanas_model_unchanged(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert differences(doc, round_trip(doc)) == []


def test_a_misspelt_field_is_caught() -> None:
    doc = json.loads(DASHBOARDS[0].read_text())
    doc["panels"][1]["fieldConfg"] = doc["panels"][1].pop("fieldConfig")
    assert any("fieldConfg" in d for d in differences(doc, round_trip(doc)))
