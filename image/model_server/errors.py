"""Errors a client can cause, each class carrying its HTTP status; and the artifact's own error.

Nothing here knows the web framework: protocol and model code raise ``Unprocessable("column
'island' ...")`` and the HTTP shell (routes.py) turns any ClientError into ``{"error": ...}``
with ``status``.
"""


class ClientError(Exception):
    """A request the server refuses. The message is safe to show the client and names what is wrong."""

    status = 400
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers (Retry-After, Connection)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ClientError):
    """The body is not a well-formed request of its protocol (malformed JSON, wrong member types)."""

    status = 400


class NotFound(ClientError):
    """No such model or version is served here."""

    status = 404


class RequestTimeout(ClientError):
    """The client did not send its request (headers, body) within the deadline; the connection closes."""

    status = 408
    headers = (("Connection", "close"),)


class PayloadTooLarge(ClientError):
    """The body or its row count is over the configured limit."""

    status = 413


class UnsupportedMediaType(ClientError):
    """The Content-Type is not one the protocol speaks."""

    status = 415


class Unprocessable(ClientError):
    """A well-formed request the model cannot take: a missing or unknown column, a wrong datatype,
    a null where the column is not nullable, a value the model refuses."""

    status = 422


class NotReady(ClientError):
    """The model is not loaded (yet): the server is live but cannot predict."""

    status = 503


class Overloaded(ClientError):
    """More prediction work is waiting in this worker than it may queue: retry shortly, or elsewhere."""

    status = 503
    headers = (("Retry-After", "1"),)


class ArtifactError(Exception):
    """A model artifact that cannot be served: missing, tampered, incompatible or unsafe."""
