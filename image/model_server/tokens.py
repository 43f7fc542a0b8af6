"""Make a bearer token for a caller and its line for the tokens file (MODEL_SERVER_AUTH_TOKENS_FILE).

    model-server-token --id ID --scopes MODEL[,MODEL...|*][,metrics] [--file TOKENS_FILE]

The token goes to standard output, once: it is stored nowhere (the file keeps only its sha256 digest),
so hand it to the caller now. With --file the line is added to that file, which is rewritten
atomically and checked as the server reads it (an id already there is refused); without, the line is
printed on standard error for you to add. Rotating a caller: add a line under a new id, move the caller
to the new token, remove the old line; the server re-reads the file within seconds, no restart.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
import tempfile
from pathlib import Path

from .config import ConfigError
from .security.identity import TokenTable, parse_scopes, token_digest

PREFIX = "mst_"  # marks the server's tokens, so secret scanners and people recognise one


def new_token() -> str:
    """256 random bits, URL-safe, behind the prefix."""
    return PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def line_for(caller_id: str, token: str, scopes: str) -> str:
    return f"{caller_id} sha256:{token_digest(token).hex()} {scopes}"


def add_line(path: Path, line: str) -> None:
    """Append ``line`` to the tokens file at ``path`` (created if absent), atomically, refusing a result the
    server would refuse (ConfigError): the file is checked as the server reads it before it replaces the old."""
    old = path.read_text() if path.exists() else ""
    text = old + ("" if not old or old.endswith("\n") else "\n") + line + "\n"
    TokenTable.read_lines(text.splitlines(), str(path))
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temp, path.stat().st_mode & 0o777 if path.exists() else 0o600)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="model-server-token", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--id", required=True, help="the caller's id, as the audit log will name it")
    parser.add_argument("--scopes", required=True, help="comma list: model names, '*' (every model), 'metrics'")
    parser.add_argument("--file", type=Path, help="tokens file to add the line to (atomically)")
    args = parser.parse_args(argv)
    token = new_token()
    line = line_for(args.id, token, args.scopes)
    try:
        parse_scopes(args.scopes, "--scopes")
        TokenTable.read_lines([line], "--id/--scopes")
        if args.file is not None:
            add_line(args.file, line)
    except (ConfigError, OSError) as exc:
        print(f"model-server-token: {exc}", file=sys.stderr)
        return 2
    print(token)
    where = f"added to {args.file}" if args.file is not None else f"add this line to the tokens file:\n{line}"
    print(f"model-server-token: {args.id} ({args.scopes}) {where}; the token above is stored nowhere", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
