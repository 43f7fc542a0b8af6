"""Operations on the GitOps environments: render, validate, promote, set-image, diff."""


class OpsError(Exception):
    """A failure the user can act on; the CLI prints it as one line and exits non-zero."""
