"""The relay workers: plain epoll loops, one per core, that carry browser connections the
router granted them (no Twisted here: see ``worker.py``)."""
