"""``twistd`` with the tunnel's frame size (and window) overridden: for what-if experiments
only, e.g. how much larger messages would buy before changing the protocol.

    TUNNEL_PAYLOAD=65536 python benchmarks/tunnel/run.py \
        --twistd "python benchmarks/tunnel/twistd_patched.py"

``TUNNEL_PAYLOAD``: bytes of payload per data frame (version 1: 16384); messages may then be
that plus 8 KiB. ``TUNNEL_WINDOW``: the per-stream window (512 KiB). Both the server and the
agent must run with the same values (``run.py`` passes its environment to both). This patches
module constants, so it follows the code only as long as they keep their names.
"""

import os
import sys

from twisted.scripts.twistd import run

import cli_server.agent.service as agent
import cli_server.tunnel.frames as frames
import cli_server.tunnel.hub as hub
import cli_server.tunnel.mux as mux

if os.environ.get("TUNNEL_PAYLOAD"):
    payload = int(os.environ["TUNNEL_PAYLOAD"])
    frames.MAX_PAYLOAD = mux.MAX_PAYLOAD = payload  # type: ignore[misc]
    frames.MAX_MESSAGE = agent.MAX_MESSAGE = hub.MAX_MESSAGE = payload + 8192  # type: ignore[misc]
if os.environ.get("TUNNEL_WINDOW"):
    window = int(os.environ["TUNNEL_WINDOW"])
    mux.WINDOW, mux._CREDIT_BATCH = window, window // 4  # type: ignore[misc]
    mux._HIGH_WATER, mux._LOW_WATER = window, window // 2  # type: ignore[misc]
    mux.Session.__init__.__kwdefaults__["window"] = window

sys.argv[0] = "twistd"
run()
