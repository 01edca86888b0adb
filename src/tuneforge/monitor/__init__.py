"""⑥ Served traffic → drift, feedback and service reports: the request log against the training data."""

from tuneforge.monitor.run import Alert, monitor
from tuneforge.monitor.window import Window, resolve_window

__all__ = ["Alert", "Window", "monitor", "resolve_window"]
