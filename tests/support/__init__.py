"""What the tests and bench runs share: `ordercheck serve` in a subprocess, /proc readers,
bounded waits (tests.support.processes) and the package's in-process fake ordering system
(worker.testing). Import from here: `from tests.support import Serve, FakeOrderingSystem`.
"""

from tests.support.processes import SERVE_DEFAULTS, Serve, alive, children, rss_kb, wait_until
from worker.testing import HOST, Advisory, FakeOrderingSystem, free_port

__all__ = [
    "HOST",
    "SERVE_DEFAULTS",
    "Advisory",
    "FakeOrderingSystem",
    "Serve",
    "alive",
    "children",
    "free_port",
    "rss_kb",
    "wait_until",
]
