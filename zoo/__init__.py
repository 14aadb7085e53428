"""The diffusion zoo: diffusion formulations side by side on MNIST (see SPEC.md)."""

__version__ = "0.1.0"


class ZooError(Exception):
    """An error with a one-line message meant for the user (the CLI prints it, no traceback)."""
