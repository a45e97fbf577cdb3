"""``python -m lb_agent.supervisor``: keep the agent serving while its files change under it.

The Kubernetes controller pod runs this instead of the agent. A commit reaches a running pod
as a new bundle in its mounted Secret, and a config change as a new ``agent.json`` in its
mounted ConfigMap (the kubelet updates both files in place), so the pod itself need not be
replaced: that would leave the endpoint down for a whole pod start (image pull, packages,
install). The supervisor:

* binds the agent's public and admin addresses once (``--config``) and passes both sockets to
  every start of the agent the way systemd does (``lb_agent/socket_activation.py``), so
  connections that arrive while the agent restarts wait in the backlog;
* every ``--interval`` seconds compares the sha256 of each watched file with the last one
  seen. ``--install-when-changed PATH``: run ``--install`` first (a failure keeps the
  running agent, and the next look tries again); ``--restart-when-changed PATH``: restart
  only. Then it stops the agent (SIGTERM, its graceful shutdown) and starts it again;
* restarts an agent that exits on its own, after ``--backoff`` seconds;
* on SIGTERM or SIGINT stops the agent and exits 0.

The agent command follows ``--``. What it says goes to stderr as ``skyform supervisor: ...``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from lb_agent import socket_activation
from lb_agent.config import AgentConfig
from lb_agent.server import AgentStartError, bind_listener

#: Puts the passed sockets at fds 3 and 4 and makes LISTEN_PID the agent's own pid (the exec
#: keeps it), as systemd does between fork and exec.
_HANDOVER = ('exec 3<&"$SKYFORM_PUBLIC_FD" 4<&"$SKYFORM_ADMIN_FD" '
             '{SKYFORM_PUBLIC_FD}<&- {SKYFORM_ADMIN_FD}<&-; '
             'unset SKYFORM_PUBLIC_FD SKYFORM_ADMIN_FD; '
             'export LISTEN_PID=$$ LISTEN_FDS=2 '
             f'LISTEN_FDNAMES={socket_activation.PUBLIC}:{socket_activation.ADMIN}; '
             'exec "$@"')
STOP_TIMEOUT_SECONDS = 30.0


def say(message: str) -> None:
    print(f"skyform supervisor: {message}", file=sys.stderr, flush=True)


def digest(path: str) -> str | None:
    """The sha256 of ``path``'s content, or None while it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def listen(host: str, port: int, what: str) -> socket.socket:
    sock = bind_listener(host, port, what)
    sock.listen(4096)
    return sock


#: (public (host, port), admin (host, port)) of an agent config.
Addresses = tuple[tuple[str, int], tuple[str, int]]


def addresses(path: str) -> Addresses:
    """Where the agent config at ``path`` listens (ConfigError when it is not valid)."""
    config = AgentConfig.load(path)
    return (config.public.host, config.public.port), (config.admin.host, config.admin.port)


@dataclass
class Listeners:
    """The agent's public and admin sockets, held here across its restarts."""

    public: socket.socket
    admin: socket.socket
    addresses: Addresses

    @classmethod
    def bind(cls, where: Addresses) -> Listeners:
        public, admin = where
        first = listen(*public, "public")
        try:
            return cls(first, listen(*admin, "admin"), where)
        except AgentStartError:
            first.close()
            raise

    def close(self) -> None:
        self.public.close()
        self.admin.close()


class Supervisor:
    """One agent process at a time, restarted around file changes (see the module doc)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.listeners = Listeners.bind(addresses(args.config))
        self.agent: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.seen = {p: digest(p) for p in (*args.install_when_changed,
                                            *args.restart_when_changed)}

    def start(self) -> None:
        # Copies at fds >= 10, so that moving them to 3 and 4 never overwrites the other.
        public = fcntl.fcntl(self.listeners.public.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        admin = fcntl.fcntl(self.listeners.admin.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        try:
            env = {**os.environ, "SKYFORM_PUBLIC_FD": str(public),
                   "SKYFORM_ADMIN_FD": str(admin)}
            self.agent = subprocess.Popen(
                ["bash", "-c", _HANDOVER, "agent", *self.args.command], env=env,
                pass_fds=(public, admin))
        finally:
            os.close(public)
            os.close(admin)
        say(f"agent started (pid {self.agent.pid})")

    def stop(self) -> None:
        agent, self.agent = self.agent, None
        if agent is None or agent.poll() is not None:
            return
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            say(f"agent (pid {agent.pid}) did not stop in {STOP_TIMEOUT_SECONDS:g} s: killed")
            agent.kill()
            agent.wait()

    def changed(self, paths: Sequence[str]) -> list[str]:
        out = []
        for path in paths:
            now = digest(path)
            if now is not None and now != self.seen.get(path):
                out.append(path)
        return out

    def look(self) -> None:
        """One look at the watched files (and the agent)."""
        install = self.changed(self.args.install_when_changed)
        restart = self.changed(self.args.restart_when_changed)
        if install:
            say(f"{', '.join(install)} changed: installing")
            done = subprocess.run(self.args.install, shell=True, check=False)
            if done.returncode != 0:
                say(f"install failed (exit {done.returncode}); the agent keeps running, "
                    "and the next look tries again")
                return
        if install or restart:
            for path in (*install, *restart):
                self.seen[path] = digest(path)
            say(f"{', '.join((*install, *restart))} changed: restarting the agent")
            self.stop()
            self.rebind()
            self.start()
        elif self.agent is not None and self.agent.poll() is not None:
            say(f"agent exited with {self.agent.returncode}; starting it again in "
                f"{self.args.backoff:g} s")
            time.sleep(self.args.backoff)
            if not self.stopping:
                self.start()

    def rebind(self) -> None:
        """Bind again when the config names other addresses (the agent is stopped)."""
        try:
            wanted = addresses(self.args.config)
        except Exception as exc:  # the agent will say what is wrong with it
            say(f"cannot read {self.args.config}: {exc}")
            return
        if wanted != self.listeners.addresses:
            try:
                moved = Listeners.bind(wanted)
            except AgentStartError as exc:
                say(f"{exc}; keeping the addresses held until now")
                return
            self.listeners.close()
            self.listeners = moved
            say(f"listening on {wanted[0][0]}:{wanted[0][1]} (public) and "
                f"{wanted[1][0]}:{wanted[1][1]} (admin) now")

    def run(self) -> int:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        try:
            while not self.stopping:
                deadline = time.monotonic() + self.args.interval
                while not self.stopping and time.monotonic() < deadline:
                    time.sleep(min(0.2, self.args.interval))
                if not self.stopping:
                    self.look()
        finally:
            self.stop()
            self.listeners.close()
        say("stopped")
        return 0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m lb_agent.supervisor",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--config", required=True,
                    help="the agent config: where the sockets listen")
    ap.add_argument("--install-when-changed", action="append", default=[], metavar="PATH")
    ap.add_argument("--install", default="", metavar="COMMAND",
                    help="run (by the shell) before restarting for an --install-when-changed file")
    ap.add_argument("--restart-when-changed", action="append", default=[], metavar="PATH")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between looks")
    ap.add_argument("--backoff", type=float, default=5.0,
                    help="seconds before starting an agent that exited again")
    ap.add_argument("command", nargs=argparse.REMAINDER,
                    help="-- then the agent command")
    args = ap.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        ap.error("give the agent command after --")
    if args.install_when_changed and not args.install:
        ap.error("--install-when-changed needs --install COMMAND")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        supervisor = Supervisor(args)
    except AgentStartError as exc:
        say(str(exc))
        return 1
    except Exception as exc:  # a bad config: the same words the agent would use
        say(f"cannot read {args.config}: {exc}")
        return 2
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
