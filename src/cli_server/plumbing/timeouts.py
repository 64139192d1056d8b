"""How long our servers wait on a silent client."""

IDLE_TIMEOUT = 60  # seconds a connection may send nothing (mid-body too) before it is closed
