"""The one exception type for errors a client can cause, and what a client is told for any error."""

from werkzeug.exceptions import HTTPException


class ClientError(Exception):
    """A request the server refuses: carries the HTTP status and a message safe to show the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ArtifactError(Exception):
    """A model artifact that cannot be served: missing, tampered, incompatible or unsafe."""


def status_and_message(exc: BaseException) -> tuple[int, str]:
    """The status and ``{"error": ...}`` message for ``exc``, the same from Flask and from the fast path."""
    if isinstance(exc, ClientError):
        return exc.status, exc.message
    if isinstance(exc, HTTPException):
        return exc.code or 500, f"{exc.name}: {exc.description}"
    return 500, "internal server error"  # details go to the log, never to the client
