"""WSGI entry point for gunicorn: ``model_server.process.wsgi:app``."""

from ..transport.app import create_app

app = create_app()
