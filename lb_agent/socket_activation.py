"""Listening sockets handed over by systemd (socket activation), so a restart refuses nothing.

On a VM the public port is a systemd socket unit
(templates/controller-cloud-init.yaml.j2): systemd holds the listening socket and
passes it to every start of the agent, as
``sd_listen_fds(3)`` describes (``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``; the fds
start at 3). While the agent restarts (a commit, a new agent config), connections wait in the
socket's backlog instead of being refused, and the new agent accepts them.

``take`` returns the socket named ``name`` when it listens where the agent config says;
otherwise the agent binds its own as before (a mismatch, such as a port changed in the config
while the VM kept its first user data, is said on stderr).
"""

from __future__ import annotations

import os
import socket
import sys

#: The first passed file descriptor (SD_LISTEN_FDS_START).
FIRST_FD = 3
#: The names (``FileDescriptorName=`` of the socket units) the agent takes.
PUBLIC = "public"
ADMIN = "admin"
_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def passed() -> dict[str, int]:
    """Name -> file descriptor of the sockets passed to this process, and forget the
    variables (as ``sd_listen_fds(1)``), so nothing the agent starts sees them."""
    env = {key: os.environ.pop(key, "") for key in _ENV}
    if env["LISTEN_PID"] != str(os.getpid()) or not env["LISTEN_FDS"].isdigit():
        return {}
    count = int(env["LISTEN_FDS"])
    names = env["LISTEN_FDNAMES"].split(":") if env["LISTEN_FDNAMES"] else []
    found: dict[str, int] = {}
    for i in range(count):
        fd = FIRST_FD + i
        os.set_inheritable(fd, False)  # systemd passes them inheritable; keep them ours
        found[names[i] if i < len(names) else f"fd{fd}"] = fd
    return found


def take(fds: dict[str, int], name: str, host: str, port: int) -> socket.socket | None:
    """The passed socket ``name`` when it is a TCP listener on ``host:port``, else None."""
    fd = fds.get(name)
    if fd is None:
        return None
    sock = socket.socket(fileno=fd)
    try:
        bound_host, bound_port = sock.getsockname()[:2]
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        sock.detach()
        print(f"skyform agent: passed socket {name!r} is not usable ({exc}); binding "
              f"{host}:{port} instead", file=sys.stderr)
        return None
    if sock.type != socket.SOCK_STREAM or not listening or (bound_host, bound_port) != (
            host, port):
        sock.detach()  # systemd keeps it; this process binds its own
        print(f"skyform agent: passed socket {name!r} listens on {bound_host}:{bound_port}, "
              f"not {host}:{port} as configured; binding that instead", file=sys.stderr)
        return None
    return sock
