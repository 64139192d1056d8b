"""
Provides cli_server version information.
"""

# This file is auto-generated! Do not edit!
# Use `incremental update cli_server` to change this file.

from incremental import Version

__version__ = Version("cli_server", 26, 11, 0, dev=0)
__all__ = ["__version__"]
