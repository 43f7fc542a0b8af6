"""WSGI entry point for gunicorn: ``model_server.process.wsgi:app``."""

import sys

from ..config import ConfigError
from ..transport.app import create_app

try:
    app = create_app()
except ConfigError as exc:
    # A setting, tokens file or key set the server cannot use: one line naming it, and no serving at all.
    sys.exit(f"model-server: {exc}")
