"""``python -m eagrl.cli``: the same command as ``eagrl``."""
from eagrl.cli.app import app

app()
