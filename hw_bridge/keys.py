"""CurveZMQ keys and the client allowlist (`rtdiff keys`, `rtdiff serve --keys DIR`).

Layout of a key directory (ZeroMQ's own certificate format, `zmq.auth.create_certificates`):

    DIR/server.key              server public key (give it to clients)
    DIR/server.key_secret       server secret key (stays on the plant machine)
    DIR/NAME.key, NAME.key_secret     a client key pair (default NAME: client)
    DIR/authorized_clients/NAME.key   the allowlist: public keys the server admits

The server runs zmq's ZAP authenticator (`ThreadAuthenticator`) with CURVE and the allowlist
directory: a client whose public key is not listed fails the CURVE handshake inside libzmq, so
not a single frame of it reaches the bridge (no state out, no command in). To revoke a client,
delete its file from `authorized_clients/` and restart the server.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

ALLOWLIST = "authorized_clients"


class KeysError(ValueError):
    """`rtdiff keys` cannot run (a bad client name, an unwritable directory); the message is
    one line for the user."""


def make_keys(out: Path, *, client: str = "client") -> list[Path]:
    """Create the server pair (if missing) and the client pair `client`, and allow the client.
    Existing files are never overwritten. Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / ALLOWLIST).mkdir(exist_ok=True)
    written: list[Path] = []
    for name in ("server", client):
        if not (out / f"{name}.key_secret").exists():
            pub, sec = zmq.auth.create_certificates(out, name)
            written += [Path(pub), Path(sec)]
    allowed = out / ALLOWLIST / f"{client}.key"
    if not allowed.exists():
        shutil.copyfile(out / f"{client}.key", allowed)
        written.append(allowed)
    for p in out.glob("*.key_secret"):
        p.chmod(0o600)
    return written


def _load(path: Path) -> tuple[bytes, bytes | None]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (make keys with `rtdiff keys --out DIR`)")
    pub, sec = zmq.auth.load_certificate(path)
    return pub, sec


def server_auth(
    ctx: zmq.Context[Any], sock: zmq.Socket[Any], keys_dir: Path
) -> ThreadAuthenticator:
    """Make `sock` a CURVE server admitting only `keys_dir/authorized_clients/*.key`."""
    pub, sec = _load(keys_dir / "server.key_secret")
    allow = keys_dir / ALLOWLIST
    if not allow.is_dir():
        raise FileNotFoundError(f"{allow} is missing: no client would be admitted")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(allow))
    sock.curve_secretkey = sec
    sock.curve_publickey = pub
    sock.curve_server = True
    return auth


def client_curve(sock: zmq.Socket[Any], keys_dir: Path, *, client: str = "client") -> None:
    """Make `sock` a CURVE client with `keys_dir/CLIENT.key_secret`, trusting `server.key`."""
    pub, sec = _load(keys_dir / f"{client}.key_secret")
    server_pub, _ = _load(keys_dir / "server.key")
    sock.curve_secretkey = sec
    sock.curve_publickey = pub
    sock.curve_serverkey = server_pub


def keys_from_args(args: argparse.Namespace) -> int:
    """`rtdiff keys --out DIR [--client NAME]`; raises `KeysError` (one line)."""
    client = getattr(args, "client", "client") or "client"
    if not client.replace("-", "").replace("_", "").isalnum():
        raise KeysError(f"--client {client!r}: use letters, digits, '-' and '_'")
    try:
        written = make_keys(Path(args.out), client=client)
    except OSError as exc:
        raise KeysError(f"cannot write keys to {args.out}: {exc}") from exc
    for p in written:
        print(p)
    if not written:
        print(f"{args.out}: keys for server and {client!r} already exist; nothing written")
    return 0
