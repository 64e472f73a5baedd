"""Network guard for the test suite's subprocesses (on their PYTHONPATH, so Python imports it at start-up).

The project claims nothing is downloaded at run time. Every process started with this
directory on its PYTHONPATH refuses connections and name lookups that leave this machine,
as a machine with no network would, and writes each attempt to ``$NETWORK_GUARD_LOG``
(one ``blocked`` line, with the process's command line), so that an attempt a library
catches and hides still shows. Each process also writes an ``armed`` line, so a test
can tell that the guard was in place. Loopback (a local test server) stays allowed.
"""

import errno
import ipaddress
import os
import socket
import sys

_LOG = os.environ.get("NETWORK_GUARD_LOG")
_LOCAL_NAMES = {"localhost", "", None, socket.gethostname()}


def _record(event: str, detail: str = "") -> None:
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(f"{event} pid={os.getpid()} argv={sys.argv} {detail}\n")


def _is_local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what: str, target) -> None:
    _record("blocked", f"{what} {target!r}")
    raise OSError(errno.ENETUNREACH, f"network access is blocked in the test suite ({what} {target!r})")


def _guard_address(method):
    def guarded(self, address, *args):
        if isinstance(address, tuple) and not _is_local(address[0]):
            _refuse(method.__name__, address)
        return method(self, address, *args)

    return guarded


def _guard_lookup(lookup):
    def guarded(host, *args, **kwargs):
        if not _is_local(host):
            _refuse(lookup.__name__, host)
        return lookup(host, *args, **kwargs)

    return guarded


socket.socket.connect = _guard_address(socket.socket.connect)
socket.socket.connect_ex = _guard_address(socket.socket.connect_ex)
socket.getaddrinfo = _guard_lookup(socket.getaddrinfo)
socket.gethostbyname = _guard_lookup(socket.gethostbyname)
_record("armed")
