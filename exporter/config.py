"""Settings: one YAML file plus ``EXPORTER_*`` environment overrides (nested keys joined by ``__``).

Relative paths in the YAML file (model, reference, an SQLite database) are resolved against the file's folder,
so a config folder can be moved as a whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from sqlalchemy.engine import make_url


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    path: Path | None = Field(
        default=None,
        description="The joblib model served at /predict. Without it the service is monitor-only: a model served "
        "elsewhere sends its predictions to /log, /log/batch or /log/cloudevents.",
    )
    name: str = "model"
    # At most 64 characters: the length of the predictions table's model_version column (PostgreSQL enforces it).
    version: str = Field(default="1", max_length=64)
    task: Literal["classification", "regression"] = "classification"


class ReferenceSection(_Section):
    path: Path
    prediction_column: str | None = Field(
        default=None,
        description="Column of the reference holding the model's predictions; computed with the model when absent "
        "(required without a model).",
    )
    probability_columns: dict[str, str] | None = Field(
        default=None,
        description="Monitor-only classification: class -> column of the reference holding the model's probability "
        "of that class. Estimated quality needs them; without them it is off.",
    )
    shift_adaptation: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Estimated quality under covariate shift: when a domain classifier tells a window's rows from "
        "the labelled reference's, refit the calibration (regression: the loss models) on reference rows weighted "
        "toward the window, and widen the band by that refit's uncertainty. auto: on for regression (DLE), off for "
        "classification (CBPE), as measured (docs: Estimated quality, under covariate shift).",
    )

    def adapts(self, task: str) -> bool:
        """Whether the estimate is weighted toward each window's mix of rows, for this task."""
        return self.shift_adaptation == "on" or (self.shift_adaptation == "auto" and task == "regression")

    check_held_out: bool = Field(
        default=True,
        description="When the drift job's worker starts, refit a copy of the model in 5-fold cross-validation on "
        "the reference and warn when the served model is much better on it: the sign of training rows used as "
        "reference.",
    )


class FeaturesSection(_Section):
    numerical: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    nullable: list[str] = Field(default_factory=list, description="Features that may be null or absent at /predict.")
    category_types: dict[str, Literal["string", "integer", "boolean"]] = Field(
        default_factory=dict,
        description="JSON type of a categorical feature's values; default: taken from the reference column.",
    )

    @model_validator(mode="after")
    def _check(self) -> FeaturesSection:
        names = self.numerical + self.categorical
        if not names:
            raise ValueError("features: configure at least one numerical or categorical feature")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features: listed more than once: {', '.join(dupes)}")
        unknown = sorted(set(self.nullable) - set(names))
        if unknown:
            raise ValueError(f"features.nullable names unknown features: {', '.join(unknown)}")
        not_categorical = sorted(set(self.category_types) - set(self.categorical))
        if not_categorical:
            raise ValueError(f"features.category_types names non-categorical features: {', '.join(not_categorical)}")
        return self

    @property
    def all(self) -> list[str]:
        return self.numerical + self.categorical


class FeatureDriftSection(_Section):
    method: str | None = None
    threshold: float | None = None


class MultivariateSection(_Section):
    method: Literal["pca_reconstruction", "classifier"] = Field(
        default="classifier",
        description="classifier: the AUC of a domain classifier telling window rows from reference rows, "
        "cross-validated (sees joint shifts of the means and of the categories; about 0.15 s a run on 6 features, "
        "0.6 s on 30); pca_reconstruction: the mean error of the window's rows rebuilt from the reference's "
        "principal components (NannyML's; cheaper, blind to a joint shift of the means).",
    )


class DriftSection(_Section):
    window_size: int = Field(default=3000, ge=1)
    window_seconds: float | None = Field(default=None, gt=0)
    min_rows: int = Field(default=100, ge=1)
    interval_seconds: float = Field(default=60.0, gt=0)
    drift_share: float = Field(default=0.5, gt=0, le=1)
    thresholds: Literal["calibrated", "evidently"] = Field(
        default="calibrated",
        description="calibrated: each feature's threshold set from its score's no-drift distribution for the "
        "reference and window sizes; evidently: the preset's fixed thresholds.",
    )
    false_alerts_per_month: float = Field(
        default=0.01, gt=0, le=100,
        description=(
            "Calibrated mode: expected false drift alerts per feature per month on stationary traffic, at most."
        ),
    )
    per_feature: dict[str, FeatureDriftSection] = Field(default_factory=dict)
    prediction: FeatureDriftSection = Field(default_factory=FeatureDriftSection)
    multivariate: MultivariateSection = Field(default_factory=MultivariateSection)
    segments: list[str] = Field(
        default_factory=list,
        description="Categorical features to segment by: drift (and quality) is also judged within each of their "
        "values, every segment's tests sharing the feature's false-alert budget.",
    )
    max_segments: int = Field(
        default=20, ge=1, le=200,
        description="Segments per segmenting feature: its most frequent reference values; the rest pooled as "
        "__other__.",
    )
    segment_min_rows: int = Field(
        default=200, ge=1,
        description="A segment is judged with at least this many rows both in the window and in the reference; "
        "below, it is reported as too small.",
    )
    report: bool = Field(default=True, description="Build the Evidently HTML report served at /monitoring.")
    timeout_seconds: float = Field(
        default=300.0, gt=0, description="A run taking longer is abandoned and counted failed."
    )
    isolation: Literal["process", "thread"] = Field(
        default="process", description="Run the job in a worker process (default) or a thread of the service."
    )

    @property
    def alpha(self) -> float | None:
        """Calibrated mode's per-run false-flag probability; None in evidently mode."""
        from exporter.calibration import per_run_alpha

        return (
            per_run_alpha(self.false_alerts_per_month, self.interval_seconds)
            if self.thresholds == "calibrated"
            else None
        )

    @model_validator(mode="after")
    def _check(self) -> DriftSection:
        if self.min_rows > self.window_size:
            raise ValueError(
                f"drift.min_rows ({self.min_rows}) is greater than drift.window_size ({self.window_size}): the window "
                "never holds enough rows and drift would never be computed"
            )
        if self.segments and self.segment_min_rows > self.window_size:
            raise ValueError(
                f"drift.segment_min_rows ({self.segment_min_rows}) is greater than drift.window_size "
                f"({self.window_size}): no segment would ever be judged"
            )
        return self


class RetentionSection(_Section):
    # Labels arrive late, by request_id: a prediction must outlive its label's delay, or its label is refused.
    max_age_days: float | None = Field(default=30.0, gt=0, description="Predictions older than this are deleted.")
    max_rows: int | None = Field(default=5_000_000, ge=1, description="Only the newest this many predictions are kept.")


class PredictionLogSection(_Section):
    queue_size: int = Field(
        default=100_000, ge=1, description="Rows buffered in memory; beyond this rows are dropped and counted."
    )
    batch_size: int = Field(default=500, ge=1)
    flush_interval_seconds: float = Field(default=0.5, gt=0)
    shutdown_timeout_seconds: float = Field(default=30.0, gt=0)
    retention: RetentionSection = Field(default_factory=RetentionSection)


class LogSection(_Section):
    """How /log/cloudevents reads the payload-logger events of a model served elsewhere (KServe, Seldon)."""

    input_columns: list[str] | None = Field(
        default=None,
        description="The features, in order, of positional inputs (V1 instances as lists, a V2 tensor [n, k]).",
    )
    prediction_output: str | None = Field(
        default=None, description="The V2 output holding the predictions; with one output, that one."
    )
    probabilities_output: str | None = Field(
        default=None,
        description="A V2 output [n, classes] of class probabilities, in the order of the classes as sorted text.",
    )
    pair_timeout_seconds: float = Field(
        default=60.0, gt=0,
        description="A request or response event whose partner has not arrived within this is dropped and counted.",
    )


class BatchingSection(_Section):
    max_batch_size: int = Field(
        default=64, ge=1, le=100_000,
        description="Most rows gathered into one model call from concurrent /predict and /predict/batch calls; "
        "1 turns batching off.",
    )
    max_wait_ms: float = Field(
        default=2.0, ge=0, le=100,
        description="Longest a gathered call waits for requests already arriving (never when a request is alone).",
    )


class AuthSection(_Section):
    token: str | None = Field(
        default=None,
        description="Bearer token required by /monitoring, /drift and /feedback (set it with EXPORTER_AUTH__TOKEN).",
    )
    protect_metrics: bool = Field(default=False, description="Also require the token on /metrics.")

    @model_validator(mode="after")
    def _check(self) -> AuthSection:
        # An unset variable in a compose file gives "": refuse it rather than silently turn authentication off.
        if self.token is not None and not self.token.strip():
            raise ValueError("auth.token is empty: unset it to turn authentication off, or set a token")
        if self.protect_metrics and self.token is None:
            raise ValueError(
                "auth.protect_metrics is true but auth.token is not set: set a token (EXPORTER_AUTH__TOKEN) "
                "or turn protect_metrics off"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXPORTER_", env_nested_delimiter="__", extra="forbid")

    model: ModelSection
    reference: ReferenceSection
    features: FeaturesSection
    target: str | None = None
    database_url: str = "sqlite:///./.exporter/predictions.db"
    drift: DriftSection = Field(default_factory=DriftSection)
    prediction_log: PredictionLogSection = Field(default_factory=PredictionLogSection)
    batching: BatchingSection = Field(default_factory=BatchingSection)
    log: LogSection = Field(default_factory=LogSection)
    max_batch_records: int = Field(default=1000, ge=1)
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    auth: AuthSection = Field(default_factory=AuthSection)
    config_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @field_validator("database_url")
    @classmethod
    def _url(cls, value: str) -> str:
        url = make_url(value)  # raises a clear ArgumentError on a malformed URL
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            # each connection would get its own empty database: the writer's, the drift worker's, the API's
            raise ValueError(
                f"{value} is an in-memory SQLite database, which the prediction writer and the drift job cannot "
                "share: use a file, e.g. sqlite:///predictions.db"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        names = set(self.features.all)
        unknown = sorted(set(self.drift.per_feature) - names)
        if unknown:
            raise ValueError(f"drift.per_feature names unknown features: {', '.join(unknown)}")
        not_categorical = [b for b in self.drift.segments if b not in self.features.categorical]
        if not_categorical:
            raise ValueError(f"drift.segments names features that are not categorical: {', '.join(not_categorical)}"
                             " (segment by features.categorical)")
        if len(set(self.drift.segments)) < len(self.drift.segments):
            raise ValueError("drift.segments names a feature twice")
        if self.target in names:
            raise ValueError(f"target {self.target!r} is also listed as a feature")
        if self.model.path is None and self.reference.prediction_column is None:
            raise ValueError(
                "reference.prediction_column is required without model.path (monitor-only): the served model's "
                "predictions on the reference are what its logged predictions are compared with"
            )
        if self.reference.probability_columns is not None and self.model.task != "classification":
            raise ValueError("reference.probability_columns is for classification models")
        if self.reference.probability_columns is not None and self.model.path is not None:
            raise ValueError("reference.probability_columns is for monitor-only (without model.path): a served "
                             "model's probabilities are computed on the reference")
        unknown = sorted(set(self.log.input_columns or []) - names)
        if unknown:
            raise ValueError(f"log.input_columns names unknown features: {', '.join(unknown)}")
        keep = self.prediction_log.retention.max_rows
        if keep is not None and keep < self.drift.window_size:
            raise ValueError(
                f"prediction_log.retention.max_rows ({keep}) is smaller than drift.window_size "
                f"({self.drift.window_size}):"
                " the drift window would never fill"
            )
        if self.max_batch_records > self.prediction_log.queue_size:
            # a batch is queued whole or refused: one larger than the queue would be refused every time
            raise ValueError(
                f"max_batch_records ({self.max_batch_records}) is larger than prediction_log.queue_size "
                f"({self.prediction_log.queue_size})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then EXPORTER_* variables, then the YAML file.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file") is not None:
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)

    def resolve(self, path: Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        return path if path.is_absolute() else (self.config_dir / path)

    @property
    def monitor_only(self) -> bool:
        """No model served here: predictions come in through /log and /log/cloudevents."""
        return self.model.path is None

    @property
    def resolved_database_url(self) -> str:
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            db = Path(url.database)
            if not db.is_absolute():
                url = url.set(database=str(self.config_dir / db))
        return url.render_as_string(hide_password=False)


class ConfigError(Exception):
    """A configuration problem, with a message meant for the person who wrote the file."""


def load_settings(path: Path | str, **overrides: Any) -> Settings:
    """Read a YAML config (with env overrides); raise ConfigError naming the file and the problem."""
    from pydantic import ValidationError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")

    file_settings = type("FileSettings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": path}})
    try:
        return file_settings(config_dir=path.resolve().parent, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid config: {problems}") from exc
    except Exception as exc:  # YAML syntax errors and the like
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc


def data_dir() -> Path:
    """Where the demo keeps its model, reference and prediction log when no config is given."""
    return Path(os.environ.get("EXPORTER_DATA_DIR", ".exporter"))
