"""The ``eagrl`` command line: :mod:`~eagrl.cli.app` composes the sub-apps; :mod:`~eagrl.cli.options` holds what they
share (the option contract, the config builder, the one-line failure)."""
from eagrl.cli.app import app
from eagrl.cli.options import build_config

__all__ = ["app", "build_config"]
