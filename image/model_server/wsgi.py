"""WSGI entry point for gunicorn: ``model_server.wsgi:app``."""

from .app import create_app

app = create_app()
