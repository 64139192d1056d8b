"""The web UI's own checks, run from the suite: strict TypeScript, Biome lint, Vitest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["check", "test"], ids=["tsc+biome", "vitest"])
def test_webui(script: str) -> None:
    """`npm run check` (tsc --noEmit, biome) and `npm test` (Vitest) pass in webui/."""
    npm = shutil.which("npm")
    assert npm, "npm is required (Node 20): the README's test command installs the web UI"
    assert (ROOT / "node_modules" / "vite").exists(), "run 'npm install' in the checkout first"
    result = subprocess.run(
        [npm, "run", script, "-w", "webui"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
