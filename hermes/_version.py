"""The single source of the package version (read by the build and by hermes.__version__)."""
__version__ = "0.1.0"
