"""Model drift exporter: serve a scikit-learn model, log predictions, publish Evidently drift to Prometheus."""

__version__ = "0.1.0"
