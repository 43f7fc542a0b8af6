"""The one exception type for errors a client can cause."""


class ClientError(Exception):
    """A request the server refuses: carries the HTTP status and a message safe to show the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ArtifactError(Exception):
    """A model artifact that cannot be served: missing, tampered, incompatible or unsafe."""
