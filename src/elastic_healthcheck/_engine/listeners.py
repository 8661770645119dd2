"""Binding and listening: the sockets a server listens on, refused and resumed in place.

:class:`Listeners` binds every address a host means on one port (``None``: every
interface, IPv6 and IPv4 together where the system allows; a name: each address it
resolves to). It can stop accepting while keeping the port (:meth:`Listeners.refuse`)
and accept again (:meth:`Listeners.resume`), for probers that only look at whether a
connection is accepted.

Every socket is recorded the moment it exists, so that whatever interrupts a bind (a
signal handler's exception, a fork) finds it: :meth:`Listeners.close` closes what was
recorded, and a forked child closes all of them (see :func:`close_all_in_child`). A
socket made while another thread forked is never listened on, and a listener stops
listening before it is closed: a child forked in either system call copies a descriptor
it cannot find, which must never hold the port.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from collections.abc import Callable

from ..logging import get_logger

__all__ = ["LISTEN_BACKLOG", "Listeners", "close_all_in_child", "display"]

log = get_logger("elastic_healthcheck.server")  # the public name operators filter on

# listen() backlog: deep enough for a burst of new connections per probe; the kernel
# clamps it to net.core.somaxconn.
LISTEN_BACKLOG = 1024

# Linux refuses connections on a listening socket after shutdown(SHUT_RD) and keeps its
# port; listen() accepts again. Elsewhere the socket is closed and bound again, and the
# port is free meanwhile (another process may take it).
REFUSE_IN_PLACE = sys.platform.startswith("linux")

# Seconds after a fork during which binding retries a port in use: the child holds a copy
# of our listener from fork() until its first act closes it, and a restart in the parent
# within that moment would find the port taken.
FORK_SETTLE = 0.5

# Every socket bound here (and the loops' wakers), for a forked child to close. Held, not
# weakly: a weak reference's callback can swallow a signal handler's exception. Closed
# ones are dropped as new ones come.
_SOCKETS: set[socket.socket] = set()
# Forks of this process so far, and whether one is under way (its handlers running).
_forks = [0]
_forking = [False]
_forked_at = [-FORK_SETTLE]  # time.monotonic() of the last one


def record(sock: socket.socket) -> socket.socket:
    """Remember ``sock`` for :func:`close_all_in_child`; return it."""
    for closed in [s for s in _SOCKETS if s.fileno() < 0]:
        _SOCKETS.discard(closed)
    _SOCKETS.add(sock)
    return sock


def close_all_in_child() -> None:
    """In a forked child: close every socket recorded, so the child holds no port."""
    for sock in list(_SOCKETS):
        sock.close()
    _SOCKETS.clear()


def _new_socket(sockets: list[socket.socket], family: int) -> socket.socket:
    """A new socket, listed in ``sockets`` and recorded before anything else runs.

    ``socket()`` runs without the GIL: a fork in another thread meanwhile gives the child
    a descriptor it cannot find, which would keep the port listening once we listen on
    it. Such a socket is closed unused and another one made.
    """
    while True:
        forks = _forks[0]
        sockets.append(socket.socket(family, socket.SOCK_STREAM))
        sock = record(sockets[-1])
        if _forks[0] == forks and not _forking[0]:
            return sock
        sock.close()
        sockets.remove(sock)


def _close(sock: socket.socket) -> None:
    """Stop listening, then close: ``close()`` runs without the GIL and the socket object
    says closed before it is, so a child forked meanwhile keeps a copy it cannot find;
    after ``shutdown()`` that copy listens no more, and the port can be bound again."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass  # not listening (nothing to stop), or not here: close() is all
    sock.close()


def _before_fork() -> None:
    _forking[0] = True


def _after_fork_in_parent() -> None:
    _forked_at[0] = time.monotonic()
    _forks[0] += 1
    _forking[0] = False


def _after_fork_in_child() -> None:
    _forking[0] = False


def _settled(call: Callable[..., None], *args: object) -> None:
    """``call(*args)``, retried while the port is in use just after a fork (FORK_SETTLE)."""
    while True:
        try:
            call(*args)
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > _forked_at[0] + FORK_SETTLE:
                raise
        time.sleep(0.005)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


def display(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Listeners:
    """The listening sockets of one server: bind, refuse, resume, close.

    Args:
        keep_port: Make :meth:`refuse` keep the port (on Linux) even when it was chosen
            by the system (port 0); costs one extra socket at bind time.
    """

    def __init__(self, keep_port: bool = False) -> None:
        self.sockets: list[socket.socket] = []
        self._keep_port = keep_port
        self._refusing = False
        # Where to bind again when refusing closed the sockets: (family, address, dualstack).
        self._unbound: list[tuple[int, tuple[object, ...], bool]] = []

    @property
    def refusing(self) -> bool:
        """``True`` between :meth:`refuse` and a successful :meth:`resume`."""
        return self._refusing

    def addresses(self) -> list[tuple[str, int]]:
        """Every (host, port) listened on, or remembered while refusing."""
        if self._unbound:
            return [_host_port(address) for _family, address, _dual in self._unbound]
        found = []
        for sock in self.sockets:
            try:
                found.append(_host_port(sock.getsockname()))
            except OSError:
                pass  # closed a moment ago
        return found

    def bind(self, host: str | None, port: int) -> None:
        """Listen on every address ``host`` means, all on one port.

        ``None`` means every interface: one IPv6 socket that also accepts IPv4 where
        the system allows (IPV6_V6ONLY off, as CPython's ``http.server`` does), else
        0.0.0.0. An explicit IPv6 address listens on IPv6 only; a name listens on each
        of its addresses (``localhost``: 127.0.0.1 and ::1), the first choosing the port.

        Raises:
            OSError: Naming host and port, with the errno kept.
        """
        shown = "*" if host is None else host
        if not 0 <= port <= 65535:
            raise OSError(
                errno.EINVAL, f"cannot listen on {display(shown, port)}: port must be 0-65535"
            )
        if host is None:
            if socket.has_dualstack_ipv6():
                try:
                    self._listen(socket.AF_INET6, ("::", port), dualstack=True)
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        raise _bind_error(exc, "::", port) from None
            try:
                self._listen(socket.AF_INET, ("0.0.0.0", port))
            except OSError as exc:
                raise _bind_error(exc, "0.0.0.0", port) from None
            return
        family = _numeric_family(host)
        if family is not None:  # an address: no resolver, no DNS, no codec import
            try:
                self._listen(family, (host, port), dualstack=host == "::")
            except OSError as exc:
                raise _bind_error(exc, host, port) from None
            return
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise _bind_error(exc, shown, port) from None
        unique: dict[tuple[int, str], tuple[int, tuple[object, ...]]] = {}
        for info in infos:
            sockaddr = tuple(info[4])
            unique.setdefault((int(info[0]), str(sockaddr[0])), (int(info[0]), sockaddr))
        for family, address in unique.values():
            if self.sockets:  # every address on the port the first one got
                address = (address[0], self.sockets[0].getsockname()[1], *address[2:])
            try:
                self._listen(family, address, family == socket.AF_INET6 and host == "::")
            except OSError as exc:
                raise _bind_error(exc, str(address[0]), _as_int(address[1])) from None

    def refuse(self) -> None:
        """Refuse new connections; keep the port where the platform allows (Linux)."""
        if self._refusing:
            return
        self._refusing = True
        if REFUSE_IN_PLACE:
            for sock in self.sockets:
                # Without SO_REUSEADDR nobody else can bind the port meanwhile, not even
                # a socket that sets SO_REUSEADDR itself.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
                sock.shutdown(socket.SHUT_RD)
            return
        self._unbound = [
            (sock.family, tuple(sock.getsockname()), _is_dualstack(sock)) for sock in self.sockets
        ]
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            _close(sock)

    def resume(self) -> None:
        """Accept again after :meth:`refuse`.

        Raises:
            OSError: An address cannot be bound again (only where the port was given
                up); the sockets stay closed and a later call retries.
        """
        if not self._refusing:
            return
        if REFUSE_IN_PLACE:
            for sock in self.sockets:
                # SO_REUSEADDR first: listen() checks the port again, against our own
                # connections on it too.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.listen(LISTEN_BACKLOG)
            self._refusing = False
            return
        try:
            for family, address, dualstack in self._unbound:
                try:
                    self._listen(family, address, dualstack)
                except OSError as exc:
                    raise _bind_error(exc, str(address[0]), _as_int(address[1])) from None
        except BaseException:
            self.close()
            raise
        self._unbound = []
        self._refusing = False

    def close(self) -> None:
        """Close every socket. Idempotent."""
        while self.sockets:
            _close(self.sockets[-1])  # still listed until closed: a child finds it
            self.sockets.pop()

    def _listen(self, family: int, address: tuple[object, ...], dualstack: bool = False) -> None:
        """Bind and listen on one address; each socket is ours before anything else runs."""
        sock = _new_socket(self.sockets, family)
        _configure(sock, family, dualstack)
        _settled(sock.bind, address)
        if REFUSE_IN_PLACE and self._keep_port and address[1] == 0:
            # A port the system chose is given back by shutdown(): bind a second socket
            # to it by number (SOCK_BINDPORT_LOCK), which keeps it while refusing.
            address = (address[0], sock.getsockname()[1], *address[2:])
            held, sock = sock, _new_socket(self.sockets, family)
            _configure(sock, family, dualstack)
            sock.bind(address)
            _close(held)
            self.sockets.remove(held)
        _settled(sock.listen, LISTEN_BACKLOG)
        sock.setblocking(False)


def _configure(sock: socket.socket, family: int, dualstack: bool) -> None:
    # SO_REUSEADDR: bind at once though connections of a previous run linger in
    # TIME_WAIT (torch restarts the server on the same port); as socket.create_server.
    if sys.platform != "win32":  # pragma: no branch - POSIX here
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dualstack else 1)


def _is_dualstack(sock: socket.socket) -> bool:
    if sock.family != socket.AF_INET6:
        return False
    return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def _host_port(sockname: object) -> tuple[str, int]:
    assert isinstance(sockname, tuple)
    return str(sockname[0]), int(sockname[1])


def _numeric_family(host: str) -> int | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family
    return None


def _as_int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _bind_error(exc: OSError, host: str, port: int) -> OSError:
    reason = exc.strerror or str(exc)
    return OSError(exc.errno, f"cannot listen on {display(host, port)}: {reason}")
