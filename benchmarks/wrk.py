"""Running wrk and reading its report, for the benchmark scripts beside this file."""

from __future__ import annotations

import re
import subprocess

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_UNITS_MIB = {"KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}


def wrk(url: str, headers: dict[str, str], seconds: int, connections: int) -> dict[str, float]:
    """req/s, errors (socket errors + non-2xx/3xx), p50/p99 ms and MiB/s of one wrk run."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not found:
        raise RuntimeError(f"wrk said: {out}")
    result = {
        "rps": float(found.group(1)),
        "errors": sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)),
    }
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] += int(non2xx.group(1)) if non2xx else 0
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if m:
            result[f"p{pct}_ms"] = float(m.group(1)) * _UNITS_MS[m.group(2)]
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(KB|MB|GB)", out)
    if transfer:
        result["mib_s"] = float(transfer.group(1)) * _UNITS_MIB[transfer.group(2)]
    return result
