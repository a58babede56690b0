"""Side-by-side benchmarks against peer products (``make bench-peers``); see docs/peers.md.

``nannyml_side`` runs in NannyML's own virtual environment (.venv-peers/nannyml) and imports nothing of ours;
``compare`` runs in ours and reads what it wrote.
"""
