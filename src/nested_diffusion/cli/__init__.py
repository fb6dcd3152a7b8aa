"""The ``nested-diffusion`` command: one module per subcommand family, ``main`` wires them."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
