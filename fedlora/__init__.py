"""fedlora: the platform's command line and the embedded demo."""

__version__ = "0.1.0"
