#!/usr/bin/env python3
"""Check TCP_NODELAY on a server's sockets, from outside the server.

usage: sockopts.py PGID HOST:PORT

Connects to HOST:PORT and makes one round trip (so the server holds an
accepted socket), then takes a copy of every TCP socket of every process
in process group PGID with pidfd_getfd(2) and reads its TCP_NODELAY.
Prints one line per socket ("listener 1", "conn 1") and exits 0 when every
one has TCP_NODELAY set, 1 when one lacks it, 77 when this kernel or its
ptrace policy does not allow pidfd_getfd (the caller skips).
"""
import ctypes
import errno
import os
import socket
import sys

SYS_pidfd_getfd = 438  # the same number on every architecture

libc = ctypes.CDLL(None, use_errno=True)


def group_pids(pgid):
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after "(comm) ": state, ppid, pgrp.
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
            yield int(d)


def sockets(pid):
    try:
        pfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(SYS_pidfd_getfd, pfd, int(name), 0)
            if fd < 0:
                e = ctypes.get_errno()
                if e in (errno.EPERM, errno.ENOSYS, errno.EACCES):
                    print(f"pidfd_getfd: {os.strerror(e)}", file=sys.stderr)
                    sys.exit(77)
                continue  # closed meanwhile
            yield socket.socket(fileno=fd)
    finally:
        os.close(pfd)


def main():
    pgid = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    client = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
    client.sendall(b"x")
    if client.recv(1) != b"x":
        sys.exit("no echo")
    bad = 0
    for pid in group_pids(pgid):
        for s in sockets(pid):
            try:
                if (s.type == socket.SOCK_STREAM and
                        s.family in (socket.AF_INET, socket.AF_INET6)):
                    kind = ("listener" if s.getsockopt(socket.SOL_SOCKET,
                            socket.SO_ACCEPTCONN) else "conn")
                    on = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    print(kind, 1 if on else 0)
                    bad += not on
            finally:
                s.close()
    client.close()
    sys.exit(1 if bad else 0)


main()
