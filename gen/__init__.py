"""The `rsgen` command line and job runner."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rsgen")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
