#!/usr/bin/env python3
"""Protocol checks for the chat and rpc services (tests/services.bats).

    svcclient.py CHECK ADDR [ARG...]

ADDR is HOST:PORT as in a server's readiness line.  Each check prints what it
did on one line and exits 0, or prints why it failed and exits 1.  Every wait
is bounded (TIMEOUT seconds); nothing here sleeps to synchronise: a pause
between the two pieces of a cut frame only makes it likely that the server
reads them apart, and the check holds either way.

rpc checks:   rpc-split, rpc-pipeline N, rpc-values, rpc-malformed,
              rpc-unknown, rpc-oversize MAX_FRAME, rpc-huge, rpc-deep,
              rpc-order (both byte orders, --rpc-order auto),
              rpc-forced le|be (a server run with --rpc-order le|be)
chat checks:  chat-many N M, chat-slow, chat-long MAX_LINE,
              chat-doc CLIENT (CLIENT: tests/helpers/doc-chat-client.py),
              chat-json-errors MAX_LINE, chat-burst LINES SIZE READERS SLOW
memory:       amplify rpc|chat CLIENTS PGID LIMIT_KB
echo:         echo-burst
"""

import contextlib
import errno
import io
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time

TIMEOUT = 20.0
# The length prefix: network order, unless a check says little-endian.
ORDER = ">I"


class Fail(Exception):
    pass


def connect(addr, rcvbuf=0):
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    if rcvbuf:
        # Before connect(), so the window the client announces is small.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(TIMEOUT)
    s.connect((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


# ---- rpc ---------------------------------------------------------------------

def frame(body):
    if isinstance(body, str):
        body = body.encode()
    return struct.pack(ORDER, len(body)) + body


def request(params, method="ping"):
    return frame(json.dumps({"in": method, "params": params},
                            ensure_ascii=False))


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        try:
            b = s.recv(n - len(buf))
        except socket.timeout:
            raise Fail("no answer within %gs (%d of %d bytes)" %
                       (TIMEOUT, len(buf), n))
        if not b:
            raise Fail("connection closed after %d of %d bytes" %
                       (len(buf), n))
        buf += b
    return bytes(buf)


def answer(s):
    (n,) = struct.unpack(ORDER, recv_exact(s, 4))
    if n > 64 << 20:
        raise Fail("an answer of %d bytes announced" % n)
    body = recv_exact(s, n)
    try:
        a = json.loads(body)
    except ValueError as e:
        raise Fail("answer is not JSON (%s): %r" % (e, body[:200]))
    if not isinstance(a, dict) or "out" not in a or "result" not in a:
        raise Fail("not an answer: %r" % body[:200])
    return a


def short(v):
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def expect_pong(s, params, what):
    a = answer(s)
    if a["out"] != "pong" or a["result"] != params or \
            type(a["result"]) is not type(params):
        raise Fail("%s: want pong %s, got %s" % (what, short(params), short(a)))


def expect_error(s, what, contains=""):
    a = answer(s)
    if a["out"] != "error" or not isinstance(a["result"], str) or \
            contains not in a["result"]:
        raise Fail("%s: want an error saying %r, got %s" % (what, contains, short(a)))
    return a["result"]


def expect_close(s, what):
    """The server closes: EOF (or a reset) within TIMEOUT."""
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end:
        try:
            b = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return
        if not b:
            return
    raise Fail("%s: the server did not close the connection" % what)


def rpc_split(addr):
    """Two frames, cut at every byte boundary: the same two answers."""
    p1 = {"user": "ireader", "n": [1, 2.5, None, True], "s": "\u00e9\u4e2d\U0001F600"}
    p2 = "second"
    data = request(p1) + request(p2)
    s = connect(addr)
    for k in range(1, len(data)):
        s.sendall(data[:k])
        time.sleep(0.002)
        s.sendall(data[k:])
        expect_pong(s, p1, "cut at byte %d" % k)
        expect_pong(s, p2, "cut at byte %d" % k)
    # And one byte per write.
    for b in data:
        s.sendall(bytes([b]))
    expect_pong(s, p1, "one byte per write")
    expect_pong(s, p2, "one byte per write")
    s.close()
    print("rpc-split: %d cuts of %d bytes, and byte by byte: every answer right" %
          (len(data) - 1, len(data)))


def rpc_pipeline(addr, n):
    """N frames in one write: N answers, in order."""
    n = int(n)
    data = b"".join(request(i) for i in range(n))
    s = connect(addr)
    s.sendall(data)
    for i in range(n):
        expect_pong(s, i, "frame %d of %d" % (i, n))
    s.close()
    print("rpc-pipeline: %d frames (%d bytes) in one write, answered in order" %
          (n, len(data)))


# Values that must come back as the same JSON value (Python compares them).
VALUES = [
    "", "ireader 0", "nul\u0000byte", "\u00e9\u4e2d\U0001F600", "\"\\/\b\f\n\r\t",
    0, -1, 9223372036854775807, -9223372036854775808,
    0.1, 1e300, -2.5e-300, 3.141592653589793,
    True, False, None, [], {}, [[[]]], {"a": {"b": [1, {"c": None}]}},
    {"z": 1, "a": 2, "m": 3}, list(range(100)), "x" * 10000,
]


def rpc_values(addr):
    """Every kind of JSON value comes back; what cannot is refused."""
    s = connect(addr)
    for v in VALUES:
        s.sendall(request(v))
        expect_pong(s, v, "params %s" % short(v))
    # The order of keys is kept (jansson keeps insertion order).
    s.sendall(request({"z": 1, "a": 2}))
    (n,) = struct.unpack(ORDER, recv_exact(s, 4))
    body = recv_exact(s, n)
    if body != b'{"out":"pong","result":{"z":1,"a":2}}':
        raise Fail("key order or format: %r" % body)
    # Refused rather than altered.
    for raw, why in [
            ('{"in":"ping","params":123456789012345678901234567890}', "integer"),
            ('{"in":"ping","params":1e400}', "overflow"),
            ('{"in":"ping","params":{"a":1,"a":2}}', "duplicate"),
            ('{"in":"ping","params":"\\ud800"}', "Unicode"),
            ('{"in":"ping","params":' + "[" * 100 + "]" * 100 + "}", "nested")]:
        s.sendall(frame(raw))
        expect_error(s, raw[:50], why)
    s.sendall(request("still here"))
    expect_pong(s, "still here", "after the refusals")
    s.close()
    print("rpc-values: %d values echoed, 5 refused with a reason" % len(VALUES))


def rpc_malformed(addr):
    """Malformed requests get errors; the connection stays usable."""
    s = connect(addr)
    bad = [b'{"in":"ping",', b"not json", b"", b"\xff\xfe", b"[1,2]", b'"ping"',
           b'{"params":1}', b'{"in":5,"params":1}']
    for b in bad:
        s.sendall(frame(b))
        expect_error(s, "body %r" % b)
    s.sendall(b"".join(frame(b) for b in bad) + request("after"))
    for b in bad:
        expect_error(s, "pipelined body %r" % b)
    expect_pong(s, "after", "a ping after the malformed ones")
    s.close()
    print("rpc-malformed: %d malformed requests answered with errors, twice; "
          "the connection still answers" % len(bad))


def rpc_unknown(addr):
    s = connect(addr)
    s.sendall(request(1, method="nosuch"))
    a = answer(s)
    if a != {"out": "error", "result": "unknown method: nosuch"}:
        raise Fail("unknown method: got %r" % a)
    s.sendall(request(2))
    expect_pong(s, 2, "after an unknown method")
    s.close()
    print("rpc-unknown: {\"out\":\"error\",\"result\":\"unknown method: nosuch\"}, "
          "then a pong")


def rpc_oversize(addr, max_frame):
    """A frame of MAX_FRAME bytes is served; one byte more: error and close."""
    m = int(max_frame)
    s = connect(addr)
    head = '{"in":"ping","params":"'
    fit = head + "x" * (m - len(head) - 2) + '"}'
    assert len(fit) == m
    s.sendall(frame(fit))
    expect_pong(s, "x" * (m - len(head) - 2), "a frame of exactly --max-frame")
    over = head + "x" * (m - len(head) - 1) + '"}'
    s.sendall(frame(over) + request("never answered"))
    expect_error(s, "a frame of --max-frame + 1", "too large")
    expect_close(s, "after the oversize frame")
    print("rpc-oversize: %d bytes served; %d bytes: error, then close" %
          (m, m + 1))


def rpc_deep(addr):
    """Deep nesting is refused before the recursive parser sees it."""
    s = connect(addr)
    for n in (65, 2000, 100000):
        s.sendall(frame('{"in":"ping","params":' + "[" * n + "]" * n + "}"))
        expect_error(s, "%d levels" % n, "nested")
    v = [[[[["63 levels are fine"]]]]]
    for _ in range(58):
        v = [v]
    s.sendall(request(v))
    expect_pong(s, v, "63 levels")
    s.close()
    print("rpc-deep: 65, 2000 and 100000 levels refused; 63 served")


def rpc_order(addr):
    """Each connection is answered in the byte order of its first frame."""
    global ORDER
    # One client after the other (the iterative server serves one at a
    # time): each connection decides for itself.
    for order in (">I", "<I", ">I"):
        ORDER = order
        s = connect(addr)
        for i in range(20):
            s.sendall(request("%s %d" % (order, i)))
            expect_pong(s, "%s %d" % (order, i), "%s frame %d" % (order, i))
        s.close()
    # Little-endian frames cut anywhere, and pipelined.
    ORDER = "<I"
    with contextlib.redirect_stdout(io.StringIO()):
        rpc_split(addr)
        rpc_pipeline(addr, 200)
    # A little-endian length above --max-frame (1 MiB, the default) whose
    # big-endian reading is larger still (not a multiple of 256: 2 MiB
    # would read 8,192): too large either way, answered big-endian.
    s = connect(addr)
    s.sendall(struct.pack("<I", (2 << 20) + 1) + b"{")
    ORDER = ">I"
    expect_error(s, "a 2 MiB little-endian length", "too large")
    expect_close(s, "after the 2 MiB length")
    print("rpc-order: big-, little-, then big-endian clients, each "
          "answered in its own order")


def rpc_forced(addr, order):
    """--rpc-order le|be: that order only, whatever the first frame."""
    global ORDER
    ORDER, other = ("<I", ">I") if order == "le" else (">I", "<I")
    # 256 bytes, the auto rule's blind spot (it reads 65,536 the other way).
    params = "x" * (256 - len(json.dumps({"in": "ping", "params": ""},
                                          ensure_ascii=False)))
    s = connect(addr)
    s.sendall(request(params))
    expect_pong(s, params, "a 256-byte frame in %s order" % order)
    s.close()
    # The other order is read as a huge length: an error, in ours.
    s = connect(addr)
    s.sendall(struct.pack(other, 40) + b"x" * 40)
    expect_error(s, "a frame in the other order", "too large")
    expect_close(s, "after the other order")
    print("rpc-forced %s: a 256-byte frame served, the other order refused" %
          order)


def rpc_huge(addr):
    """A length field announcing 3 GB: an error and a close, at once."""
    s = connect(addr)
    # 0xC00000C0: 3 GB read either way.  (0xC0000000 would be a 192-byte
    # little-endian frame to a server that tells the orders apart.)
    s.sendall(struct.pack(">I", (3 << 30) | 0xC0) + b'{"in":"ping","params":"' +
              b"x" * 65536)
    msg = expect_error(s, "a 3 GB length", "too large")
    expect_close(s, "after the 3 GB length")
    print("rpc-huge: %s; closed" % msg)


# ---- chat --------------------------------------------------------------------

class Peer:
    """A chat client in a selector loop: queued output, lines in."""

    def __init__(self, addr, rcvbuf=0):
        self.s = connect(addr, rcvbuf)
        self.s.setblocking(False)
        self.out = bytearray()
        self.buf = bytearray()
        self.lines = []         # every line, as bytes
        self.said = []          # the "[NAME] text" ones, as (name, text)
        self.notices = []       # the "* ..." ones
        self.eof = False
        self.name = None

    def send(self, data):
        self.out += data

    def pump_out(self):
        if self.out:
            try:
                n = self.s.send(self.out)
                del self.out[:n]
            except BlockingIOError:
                pass

    def pump_in(self):
        while True:
            try:
                b = self.s.recv(65536)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.eof = True
                return
            if not b:
                self.eof = True
                return
            self.buf += b
            while True:
                i = self.buf.find(b"\n")
                if i < 0:
                    break
                ln = bytes(self.buf[:i])
                del self.buf[:i + 1]
                self.lines.append(ln)
                if ln.startswith(b"* "):
                    self.notices.append(ln)
                elif ln.startswith(b"["):
                    k = ln.find(b"] ")
                    self.said.append((ln[1:k].decode(), ln[k + 2:].decode()))


def loop(peers, done, what, readers=None):
    """Pump every peer (READERS: the ones read) until done() or TIMEOUT."""
    if readers is None:
        readers = peers
    end = time.monotonic() + TIMEOUT
    sel = selectors.DefaultSelector()
    interest = {}
    try:
        while not done():
            if time.monotonic() > end:
                raise Fail("%s: not done after %gs" % (what, TIMEOUT))
            for p in peers:
                ev = selectors.EVENT_WRITE if p.out else 0
                if p in readers and not p.eof:
                    ev |= selectors.EVENT_READ
                old = interest.get(p, 0)
                if ev == old:
                    continue
                if not old:
                    sel.register(p.s, ev, p)
                elif not ev:
                    sel.unregister(p.s)
                else:
                    sel.modify(p.s, ev, p)
                interest[p] = ev
            for key, mask in sel.select(0.1):
                p = key.data
                if mask & selectors.EVENT_WRITE:
                    p.pump_out()
                if mask & selectors.EVENT_READ:
                    p.pump_in()
    finally:
        sel.close()


def welcomed(peers, addr):
    """Wait for every welcome: then every peer is in the room."""
    loop(peers, lambda: all(p.lines for p in peers), "welcome")
    for p in peers:
        w = p.lines.pop(0).decode()
        pre = "* welcome, "
        if not w.startswith(pre):
            raise Fail("first line is not a welcome: %r" % w)
        p.name = w[len(pre):].split(" ")[0].rstrip(":")
        host, port = p.s.getsockname()[:2]
        want = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
        if p.name != want:
            raise Fail("default name %r, want the peer address %r" %
                       (p.name, want))


def chat_many(addr, n, m):
    """N clients each say M lines; each hears all the others', in order."""
    n, m = int(n), int(m)
    peers = [Peer(addr) for _ in range(n)]
    welcomed(peers, addr)
    for j in range(m):
        for i, p in enumerate(peers):
            p.send(b"line %d %d\n" % (i, j))
    want = (n - 1) * m
    loop(peers, lambda: all(len(p.said) >= want for p in peers), "delivery")
    for r, p in enumerate(peers):
        got = p.said
        if len(got) != want:
            raise Fail("client %d heard %d lines, want %d" % (r, len(got), want))
        nxt = [0] * n
        for name, text in got:
            _, i, j = text.split()
            i, j = int(i), int(j)
            if i == r:
                raise Fail("client %d heard its own line %r" % (r, text))
            if name != peers[i].name:
                raise Fail("line %r from client %d named %r, want %r" %
                           (text, i, name, peers[i].name))
            if j != nxt[i]:
                raise Fail("client %d heard line %d of client %d, want %d" %
                           (r, j, i, nxt[i]))
            nxt[i] += 1
    for p in peers:
        p.s.close()
    print("chat-many: %d clients x %d lines: each heard the other %d lines, "
          "in each sender's order" % (n, m, want))


def chat_slow(addr):
    """A client that stops reading is dropped; the others hear everything."""
    slow = Peer(addr, rcvbuf=4096)
    a, b = Peer(addr), Peer(addr)
    welcomed([slow, a, b], addr)
    left = ("* %s left" % slow.name).encode()
    line = b"x" * 4000
    sent, window, limit = 0, 16, 4000     # at most 16 MB in all
    after = None                          # lines sent after the drop

    def progress():
        nonlocal sent, after
        heard = len(b.said)
        if after is None and left in b.notices:
            after = sent
        while sent < limit and sent - heard < window and \
                (after is None or sent < after + 50):
            a.send(b"%d %s\n" % (sent, line))
            sent += 1
        return after is not None and heard == sent and sent >= after + 50

    # slow is never read: its queue at the server grows until dropped.
    loop([slow, a, b], progress, "dropping the slow client", readers=[a, b])
    got = b.said
    for k, (name, text) in enumerate(got):
        if name != a.name or int(text.split()[0]) != k:
            raise Fail("b heard %r from %r as line %d" % (text[:20], name, k))
    # Now read what the server had sent to slow: it must end (EOF or
    # reset), and be a prefix of what a said.
    slow.s.setblocking(True)
    slow.s.settimeout(TIMEOUT)
    n = 0
    try:
        while True:
            d = slow.s.recv(1 << 20)
            if not d:
                break
            slow.buf += d
            n += len(d)
    except socket.timeout:
        raise Fail("the slow client was not closed (%d bytes read)" % n)
    except ConnectionResetError:
        pass
    print("chat-slow: dropped after %d lines of 4 KB; the other client heard "
          "all %d, in order; the slow one got %d bytes, then the close" %
          (after, len(got), n))


def chat_long(addr, max_line):
    """A line past --max-line: an error to the sender, nothing to the room."""
    m = int(max_line)
    a, b = Peer(addr), Peer(addr)
    welcomed([a, b], addr)
    a.send(b"y" * m + b"\n")              # exactly the limit: said
    a.send(b"z" * (m + 1) + b"\n")        # one more: refused
    a.send(b"w" * (3 * m) + b"\nafter\n")  # far more, then a short one
    loop([a, b], lambda: len(b.said) >= 2 and
         sum(ln.startswith(b"! ") for ln in a.lines) >= 2, "long lines")
    texts = [t for _, t in b.said]
    if texts != ["y" * m, "after"]:
        raise Fail("the room heard %r" % [t[:20] for t in texts])
    errs = [ln for ln in a.lines if ln.startswith(b"! ")]
    if len(errs) != 2 or b"too long" not in errs[0]:
        raise Fail("the sender got %r" % errs)
    print("chat-long: %d bytes said; %d and %d bytes refused with %r" %
          (m, m + 1, 3 * m, errs[0].decode()))


class Reader:
    """Everything a pipe or socket gives, gathered by a thread."""

    def __init__(self, read):
        self.data = b""
        self.cv = threading.Condition()
        self.t = threading.Thread(target=self._run, args=(read,), daemon=True)
        self.t.start()

    def _run(self, read):
        while True:
            try:
                b = read(65536)
            except OSError:
                b = b""
            with self.cv:
                if not b:
                    self.cv.notify_all()
                    return
                self.data += b
                self.cv.notify_all()

    def wait(self, what, who):
        end = time.monotonic() + TIMEOUT
        with self.cv:
            while what not in self.data:
                left = end - time.monotonic()
                if left <= 0 or not self.t.is_alive():
                    raise Fail("%s never got %r; it got: %r" %
                               (who, what, self.data[-600:]))
                self.cv.wait(left)


def chat_doc(addr, client):
    """The documents' JSON clients and a line client share one room."""
    host, _, port = addr.rpartition(":")
    procs, out = {}, {}
    try:
        for name in ("alice", "bob"):
            p = subprocess.Popen(
                [sys.executable, "-u", client, "-host", host.strip("[]"),
                 "-port", port, "-username", name],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs[name] = p
            out[name] = Reader(p.stdout.read1)
            out[name].wait(b"* welcome", name)
        carol = connect(addr)
        carol.settimeout(None)
        out["carol"] = Reader(carol.recv)
        out["carol"].wait(b"* welcome", "carol")
        carol.sendall(b"/nick carol\n")
        out["carol"].wait(b"* you are now carol\n", "carol")

        def say(name, text):
            procs[name].stdin.write(text.encode() + b"\n")
            procs[name].stdin.flush()

        # A JSON message reaches everyone, its sender too (the documents'
        # server sends it to every connection).
        say("alice", "hello from alice")
        for who in ("alice", "bob", "carol"):
            out[who].wait(b"[alice] hello from alice\n", who)
        say("bob", "\u4f60\u597d, alice")
        for who in ("alice", "bob", "carol"):
            out[who].wait("[bob] \u4f60\u597d, alice\n".encode(), who)
        # A line reaches the others, as ever.
        carol.sendall(b"hi, JSON clients\n")
        for who in ("alice", "bob"):
            out[who].wait(b"[carol] hi, JSON clients\n", who)
        # Then one more message: by the time carol hears it, she would
        # have heard her own line before it.
        say("alice", "last")
        out["carol"].wait(b"[alice] last\n", "carol")
        if b"[carol]" in out["carol"].data:
            raise Fail("carol (a line client) heard her own line")
        for who in out:
            if b"\n! " in out[who].data:
                raise Fail("%s got an error: %r" % (who, out[who].data))
        carol.close()
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    print("chat-doc: two of the documents' JSON clients and a line client "
          "heard each other, the JSON senders their own messages")


def chat_json_errors(addr, max_line):
    """Bad JSON messages get errors; the stream stays in step."""
    max_line = int(max_line)
    a, b = Peer(addr), Peer(addr)
    welcomed([a, b], addr)
    msgs = [
        (b'{"user": "a" "text": "b"}', b"! invalid JSON message"),
        (b'{"user": "alice"}', b"! a JSON message is"),
        (b'{"user": "al ice", "text": "x"}', b'! bad "user"'),
        (b'{"user": "alice", "text": "' + b"x" * max_line + b'"}',
         b"! JSON message too long"),
        (b'{"user": "alice", "text": "a' + b"[" * 40 + b'"}',
         None),    # brackets inside a string are text
        (b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}", b"! JSON message nested"),
        (b'{"user": "alice", "text": "unfinished\n', b"! invalid JSON message"),
    ]
    for data, err in msgs:
        a.send(data)
        a.send(b'{"user": "alice", "text": "next"}')
        loop([a, b], lambda: ("alice", "next") in b.said, "after %r" % data[:40])
        if err is not None and not any(ln.startswith(err) for ln in a.lines):
            raise Fail("no %r for %r; got %r" % (err, data[:40], a.lines[-3:]))
        if err is None and ("alice", "a" + "[" * 40) not in b.said:
            raise Fail("brackets in a string: %r" % b.said[-3:])
        b.said.clear()
        a.lines.clear()
    print("chat-json-errors: %d bad messages refused with a ! line, each "
          "followed by one that was heard" % (len(msgs) - 1))


def chat_burst(addr, nlines, size, nreaders, slow):
    """A talker says NLINES lines of SIZE bytes in one sendall and never
    reads; NREADERS clients read as fast as they can, and SLOW (0 or 1) one
    more never reads (SO_RCVBUF 4 KiB).  Every reader hears every line, in
    order: a burst must not make the server drop a client that reads.  The
    talker is still connected after: its last line is heard too."""
    nlines, size, nreaders, slow = int(nlines), int(size), int(nreaders), int(slow)
    readers = [Peer(addr) for _ in range(nreaders)]
    talker = Peer(addr)
    peers = readers + [talker]
    if slow:
        s = Peer(addr, rcvbuf=4096)
        peers.append(s)
    welcomed(peers, addr)
    pad = b"x" * (size - 8)
    data = b"".join(b"%06d %s\n" % (i, pad) for i in range(nlines))
    err = []

    def talk():
        try:
            talker.s.setblocking(True)
            talker.s.settimeout(60)
            talker.s.sendall(data)
            talker.s.sendall(b"done\n")
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=talk)
    t.start()
    try:
        loop(readers, lambda: err or all(
            p.eof or (p.said and p.said[-1][1] == "done") for p in readers),
            "the burst", readers=readers)
    finally:
        t.join(60)
    if err:
        raise Fail("the talker's sendall failed: %s" % err[0])
    for r, p in enumerate(readers):
        got = [text for name, text in p.said if name == talker.name]
        ok = 0
        for i, text in enumerate(got[:nlines]):
            if not text.startswith("%06d " % i) or len(text) != size - 1:
                break
            ok += 1
        if ok != nlines or got[nlines:] != ["done"]:
            raise Fail("reader %d of %d heard %d of %d lines in order%s" %
                       (r + 1, nreaders, ok, nlines,
                        ", then EOF" if p.eof else ""))
    if slow:
        # The slow one must be closed by now or soon: read what it got.
        s.s.setblocking(True)
        s.s.settimeout(TIMEOUT)
        n = 0
        try:
            while True:
                d = s.s.recv(1 << 20)
                if not d:
                    break
                n += len(d)
        except socket.timeout:
            raise Fail("the slow client was not closed (%d bytes read)" % n)
        except ConnectionResetError:
            pass
    print("chat-burst: %d lines of %d bytes in one write: %d reader(s) heard "
          "all%s" % (nlines, size, nreaders,
                     ", the slow one was closed" if slow else ""))


def group_rss_kb(pgid):
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
            if int(st[st.rindex(")") + 2:].split()[2]) != pgid:
                continue
            with open("/proc/%s/status" % d) as f:
                for ln in f:
                    if ln.startswith("VmRSS:"):
                        total += int(ln.split()[1])
        except (OSError, ValueError):
            continue
    return total


def amplify(addr, proto, nclients, pgid, limit_kb):
    """NCLIENTS send requests whose answers are much larger than they are
    (rpc: a zero-length frame, 4 bytes, gets a ~90-byte error; chat: "/",
    2 bytes, gets a ~35-byte error) and never read.  The server must stop
    reading them (--highwater): its resident memory, sampled throughout,
    stays under LIMIT_KB.  Each client sends until it has been blocked for
    a second (the server stopped reading) or 16 MB."""
    nclients, pgid, limit_kb = int(nclients), int(pgid), int(limit_kb)
    unit = b"\0\0\0\0" if proto == "rpc" else b"/\n"
    chunk = unit * (65536 // len(unit))
    budget = 16 << 20
    cl = [connect(addr) for _ in range(nclients)]
    for s in cl:
        s.setblocking(False)
    sent = [0] * nclients
    rss0 = peak = group_rss_kb(pgid)
    last = time.monotonic()
    end = last + 60
    while True:
        now = time.monotonic()
        moved = False
        for i, s in enumerate(cl):
            if sent[i] >= budget:
                continue
            try:
                n = s.send(chunk)
                sent[i] += n
                moved = moved or n > 0
            except BlockingIOError:
                pass
        rss = group_rss_kb(pgid)
        peak = max(peak, rss)
        if peak > limit_kb:
            raise Fail("server RSS %d KiB (from %d) after %d bytes sent: "
                       "over %d KiB" % (peak, rss0, sum(sent), limit_kb))
        if moved:
            last = now
        elif now - last > 1.0 or all(x >= budget for x in sent):
            break
        else:
            time.sleep(0.005)
        if now > end:
            break
    # Still connected, the server still holds what it holds: look again.
    rss = group_rss_kb(pgid)
    peak = max(peak, rss)
    if peak > limit_kb:
        raise Fail("server RSS %d KiB (from %d): over %d KiB" %
                   (peak, rss0, limit_kb))
    for s in cl:
        s.close()
    print("amplify %s: %d clients sent %d bytes, never read: server RSS "
          "%d -> %d KiB at most (limit %d)" % (proto, nclients, sum(sent),
                                               rss0, peak, limit_kb))


def echo_burst(addr):
    """One client streams megabytes (and reads its echo) while another
    makes small round trips: the second is served all along, and neither
    is disconnected.  The stream goes on until the second client has made
    100 round trips, each within TIMEOUT."""
    a, b = connect(addr), connect(addr)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    block = bytes(range(256)) * 4096             # 1 MiB
    stop = threading.Event()
    err = []
    sent = [0]
    got = [0]

    def send():
        try:
            while not stop.is_set():
                a.sendall(block)
                sent[0] += len(block)
            a.shutdown(socket.SHUT_WR)
        except OSError as e:
            err.append("stream send: %s" % e)

    def recv():
        try:
            while True:
                d = a.recv(1 << 20)
                if not d:
                    break
                off = got[0] % len(block)
                if d != (block[off:] + block * (len(d) // len(block) + 1))[:len(d)]:
                    err.append("stream: wrong bytes at offset %d" % got[0])
                    return
                got[0] += len(d)
        except OSError as e:
            err.append("stream recv: %s" % e)

    ts = [threading.Thread(target=send), threading.Thread(target=recv)]
    for t in ts:
        t.start()
    n, worst, during = 0, 0.0, 0
    try:
        while n < 100 and not err:
            msg = b"round trip %d\n" % n
            t0 = time.monotonic()
            b.sendall(msg)
            if recv_exact(b, len(msg)) != msg:
                raise Fail("round trip %d: wrong bytes" % n)
            worst = max(worst, time.monotonic() - t0)
            if got[0] < sent[0]:
                during += 1
            n += 1
    finally:
        stop.set()
        for t in ts:
            t.join(TIMEOUT)
    if err:
        raise Fail(err[0])
    if got[0] != sent[0]:
        raise Fail("the stream got %d of %d bytes back" % (got[0], sent[0]))
    b.close()
    a.close()
    print("echo-burst: %d round trips (%d while the stream was in flight, "
          "slowest %.3f s) beside a stream of %d MiB, all intact" %
          (n, during, worst, sent[0] >> 20))


CHECKS = {
    "chat-burst": chat_burst, "amplify": amplify, "echo-burst": echo_burst,
    "rpc-split": rpc_split, "rpc-pipeline": rpc_pipeline,
    "rpc-values": rpc_values, "rpc-malformed": rpc_malformed,
    "rpc-unknown": rpc_unknown, "rpc-oversize": rpc_oversize,
    "rpc-huge": rpc_huge, "rpc-deep": rpc_deep, "rpc-order": rpc_order,
    "rpc-forced": rpc_forced, "chat-many": chat_many, "chat-slow": chat_slow,
    "chat-long": chat_long, "chat-doc": chat_doc,
    "chat-json-errors": chat_json_errors,
}


def main(argv):
    if len(argv) < 3 or argv[1] not in CHECKS:
        sys.stderr.write(__doc__)
        return 2
    try:
        CHECKS[argv[1]](*argv[2:])
    except Fail as e:
        print("%s: FAILED: %s" % (argv[1], e))
        return 1
    except OSError as e:
        print("%s: FAILED: %s" % (argv[1], e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
