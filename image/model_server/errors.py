"""Errors a client can cause, each class carrying its HTTP status; and the artifact's own error.

Nothing here knows the web framework: protocol and model code raise ``Unprocessable("column
'island' ...")`` and the HTTP shell (routes.py) turns any ClientError into ``{"error": ...}``
with ``status``.
"""


class ClientError(Exception):
    """A request the server refuses. The message is safe to show the client and names what is wrong."""

    status = 400
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers (Retry-After, Connection)

    def __init_subclass__(cls, status: int | None = None, headers: tuple[tuple[str, str], ...] | None = None) -> None:
        """Each refusal declares its status (and any extra headers) in its class line; unsaid, they are inherited."""
        super().__init_subclass__()
        if status is not None:
            cls.status = status
        if headers is not None:
            cls.headers = headers

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # Who was refused, about which model: the audit log's fields (the guard sets them on 401 and 403).
        self.caller = "anonymous"
        self.model = ""


class BadRequest(ClientError, status=400):
    """The body is not a well-formed request of its protocol (malformed JSON, wrong member types)."""


class Unauthorized(ClientError, status=401, headers=(("WWW-Authenticate", 'Bearer realm="model-server"'),)):
    """No credentials, or not in a form the server reads: the endpoint needs a caller it knows."""


class InvalidToken(Unauthorized, headers=(("WWW-Authenticate", 'Bearer realm="model-server", error="invalid_token"'),)):
    """A bearer token the server does not know, or a ServiceAccount token that does not verify."""


class Forbidden(
    ClientError, status=403, headers=(("WWW-Authenticate", 'Bearer realm="model-server", error="insufficient_scope"'),)
):
    """A known caller whose scopes do not include what it asked for."""


class NotFound(ClientError, status=404):
    """No such model or version is served here."""


class RequestTimeout(ClientError, status=408, headers=(("Connection", "close"),)):
    """The client did not send its request (headers, body) within the deadline; the connection closes."""


class PayloadTooLarge(ClientError, status=413):
    """The body or its row count is over the configured limit."""


class UnsupportedMediaType(ClientError, status=415):
    """The Content-Type is not one the protocol speaks."""


class Unprocessable(ClientError, status=422):
    """A well-formed request the model cannot take: a missing or unknown column, a wrong datatype,
    a null where the column is not nullable, a value the model refuses."""


class NotReady(ClientError, status=503):
    """The model is not loaded (yet): the server is live but cannot predict."""


class Overloaded(ClientError, status=503, headers=(("Retry-After", "1"),)):
    """More prediction work is waiting in this worker than it may queue: retry shortly, or elsewhere."""


class BodyBudgetExceeded(ClientError, status=503, headers=(("Retry-After", "1"),)):
    """This worker holds as many request-body bytes as it may: retry shortly, or elsewhere. The body was
    not read, so the connection closes after the answer."""


class ArtifactError(Exception):
    """A model artifact that cannot be served: missing, tampered, incompatible or unsafe."""
