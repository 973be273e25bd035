"""active_series: exact monthly-active time-series billing on PostgreSQL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("active-series")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
