"""The official Python server SDK (`pusher` on PyPI) against a real stapes.

Starts the binary named by STAPES_BIN on a free loopback port with two
shards and an app with a numeric id (the SDK refuses others), and checks
what the SDK sends and reads back: trigger, trigger_batch, channels_info,
channel_info (with info=cache), users_info, terminate_user_connections
(which the SDK posts to /users/{id}/terminate_connections, without the app)
and send_to_user. Events are observed by small WebSocket subscribers
written here on the standard library, so the test needs nothing but the SDK.

With STAPES_CONFORMANCE_NODES=2 the same tests run against two nodes
sharing a redis-server started here (issue #12): the WebSocket subscribers
connect to node A and the SDK talks to node B.

Every wait is bounded; a test fails with what it was waiting for.
"""

import base64
import json
import os
import socket
import struct
import subprocess
import tempfile
import time
import unittest

import pusher

HOST = "127.0.0.1"
APP_ID = "4242"
KEY = "python-key"
SECRET = "python-secret"
WAIT_S = 5.0
START_S = 10.0
NODES = os.environ.get("STAPES_CONFORMANCE_NODES", "1")
if NODES not in ("1", "2"):
    raise SystemExit(f"STAPES_CONFORMANCE_NODES must be 1 or 2, got {NODES!r}")


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Ws:
    """A minimal Pusher client: RFC 6455 text frames over a plain socket."""

    def __init__(self, port):
        self.sock = socket.create_connection((HOST, port), timeout=WAIT_S)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /app/{KEY}?protocol=7&client=python-test&version=1 HTTP/1.1\r\n"
            f"Host: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        hello = self.next_event("pusher:connection_established")
        self.socket_id = json.loads(hello["data"])["socket_id"]
        self.closed_with = None

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the socket")
        self.buf += chunk

    def _need(self, n):
        while len(self.buf) < n:
            self._fill()

    def recv(self):
        """The next text message as JSON, or {"close": code}."""
        self._need(2)
        op, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        at = 2
        if n == 126:
            self._need(4)
            n, at = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(at + n)
        payload, self.buf = self.buf[at : at + n], self.buf[at + n :]
        if op == 0x8:
            return {"close": struct.unpack(">H", payload[:2])[0]}
        if op in (0x9, 0xA):
            return self.recv()
        return json.loads(payload)

    def next_event(self, name, channel=None):
        deadline = time.monotonic() + WAIT_S
        seen = []
        while time.monotonic() < deadline:
            msg = self.recv()
            if "close" in msg:
                raise AssertionError(f"closed {msg} while waiting for {name}; saw {seen}")
            if msg.get("event") == name and (channel is None or msg.get("channel") == channel):
                return msg
            seen.append(msg)
        raise AssertionError(f"no {name} within {WAIT_S} s; saw {seen}")

    def send(self, obj):
        data = json.dumps(obj).encode()
        mask = os.urandom(4)
        head = bytes([0x81])
        if len(data) < 126:
            head += bytes([0x80 | len(data)])
        else:
            head += bytes([0x80 | 126]) + struct.pack(">H", len(data))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + masked)

    def subscribe(self, channel, auth="", channel_data=None):
        data = {"channel": channel, "auth": auth}
        if channel_data is not None:
            data["channel_data"] = channel_data
        self.send({"event": "pusher:subscribe", "data": data})
        return self.next_event("pusher_internal:subscription_succeeded", channel)

    def close(self):
        self.sock.close()


class PythonSdk(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        binary = os.environ.get("STAPES_BIN")
        if not binary or not os.access(binary, os.X_OK):
            raise RuntimeError(f"STAPES_BIN must name the stapes binary, got {binary!r}")
        cls.dir = tempfile.TemporaryDirectory(prefix="stapes-python-")
        cls.processes = []
        try:
            cls.start(binary)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start(cls, binary):
        redis = None
        if NODES == "2":
            port = free_port()
            redis = f"redis://{HOST}:{port}"
            cls.spawn(
                "redis",
                ["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                 "--appendonly", "no", "--dir", cls.dir.name],
                port,
            )
        ports = [cls.start_node(binary, f"node-{n}", redis) for n in "ab"[: int(NODES)]]
        # The WebSocket clients on the first node, the SDK on the last.
        cls.port, api_port = ports[0], ports[-1]
        cls.sdk = pusher.Pusher(
            app_id=APP_ID, key=KEY, secret=SECRET, ssl=False, host=HOST, port=api_port,
            timeout=WAIT_S,
        )
        if redis:
            cls.joined()

    @classmethod
    def start_node(cls, binary, name, redis):
        port = free_port()
        config = os.path.join(cls.dir.name, f"{name}.yml")
        with open(config, "w") as f:
            f.write(
                f"server:\n  host: {HOST}\n  port: {port}\n  shards: 2\n"
                f"apps:\n  - id: {APP_ID}\n    key: {KEY}\n    secret: {SECRET}\n"
            )
            if redis:
                f.write(f"redis:\n  url: {redis}\n  instance: python-{name}\n  reconnect_max_ms: 500\n")
        cls.spawn(name, [binary, "--config", config], port)
        return port

    @classmethod
    def spawn(cls, name, argv, port):
        """Start `argv` (output to a file in the temp dir) and wait for `port`."""
        log_path = os.path.join(cls.dir.name, f"{name}.log")
        log = open(log_path, "wb")
        env = dict(os.environ, STAPES_SHARDS="2")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        cls.processes.append((name, proc, log_path))
        deadline = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {cls.log(name)}")
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not accept connections within {START_S} s")
                time.sleep(0.05)

    @classmethod
    def log(cls, name):
        path = os.path.join(cls.dir.name, f"{name}.log")
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    @classmethod
    def wait_until(cls, predicate, what):
        deadline = time.monotonic() + START_S
        while not predicate():
            if time.monotonic() > deadline:
                logs = "".join(f"\n--- {n} ---\n{cls.log(n)[-3000:]}" for n, _, _ in cls.processes)
                raise RuntimeError(f"timed out waiting for {what}{logs}")
            time.sleep(0.02)

    @classmethod
    def joined(cls):
        """Both nodes in the cluster: a subscription on A is seen through B,
        an event triggered on B reaches A, and each node has said so."""
        probe = "py-cluster-probe"
        c = Ws(cls.port)
        try:
            c.subscribe(probe)
            cls.wait_until(lambda: cls.sdk.channel_info(probe)["occupied"], "A's subscription seen on B")
            cls.sdk.trigger(probe, "probe", {})
            c.next_event("probe", probe)
        finally:
            c.close()
        cls.wait_until(lambda: not cls.sdk.channel_info(probe)["occupied"], "the probe vacated on B")
        level = os.environ.get("STAPES_LOG", "")
        if not level or any(w in level for w in ("info", "debug", "trace")):
            for name in ("node-a", "node-b"):
                cls.wait_until(lambda: "in the cluster" in cls.log(name), f"{name} in the cluster")

    @classmethod
    def tearDownClass(cls):
        # Nodes first (a node leaves the cluster through Redis), Redis last.
        order = [p for p in reversed(cls.processes) if p[0] != "redis"]
        order += [p for p in cls.processes if p[0] == "redis"]
        killed = [name for name, proc, _ in order if not cls.stop(proc)]
        cls.processes = []
        cls.dir.cleanup()
        if killed:
            raise RuntimeError(f"needed SIGKILL after 10 s of SIGTERM: {killed}")

    @staticmethod
    def stop(proc):
        """SIGTERM, then SIGKILL after 10 s; False if it took the SIGKILL."""
        proc.terminate()
        try:
            proc.wait(timeout=10)
            return True
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False

    def setUp(self):
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            c.close()

    def client(self):
        c = Ws(self.port)
        self.clients.append(c)
        return c

    def presence_member(self, channel, user_id):
        c = self.client()
        data = {"user_id": user_id, "user_info": {"name": user_id}}
        auth = self.sdk.authenticate(channel, c.socket_id, data)
        c.subscribe(channel, auth["auth"], auth["channel_data"])
        return c

    def test_trigger_reaches_subscribers_on_both_shards_and_answers_empty(self):
        subs = [self.client() for _ in range(4)]
        for c in subs:
            c.subscribe("py-news")
        self.assertEqual(self.sdk.trigger("py-news", "update", {"n": 1}), {})
        for c in subs:
            event = c.next_event("update", "py-news")
            self.assertEqual(json.loads(event["data"]), {"n": 1})

    def test_trigger_excludes_the_socket_id(self):
        me, other = self.client(), self.client()
        for c in (me, other):
            c.subscribe("py-excl")
        self.sdk.trigger(["py-excl"], "first", "skip me", socket_id=me.socket_id)
        self.sdk.trigger(["py-excl"], "second", "all")
        self.assertEqual(other.next_event("first")["data"], "skip me")
        self.assertEqual(me.next_event("second")["data"], "all", "first never reached me")

    def test_trigger_batch_delivers_each_event(self):
        c = self.client()
        c.subscribe("py-a")
        c.subscribe("py-b")
        batch = [
            {"channel": "py-a", "name": "one", "data": {"x": 1}},
            {"channel": "py-b", "name": "two", "data": "plain"},
        ]
        self.assertEqual(self.sdk.trigger_batch(batch), {})
        self.assertEqual(json.loads(c.next_event("one", "py-a")["data"]), {"x": 1})
        self.assertEqual(c.next_event("two", "py-b")["data"], "plain")

    def test_channels_info_lists_occupied_channels_with_user_counts(self):
        c = self.client()
        c.subscribe("py-list-1")
        self.presence_member("presence-py-list", "u1")
        self.presence_member("presence-py-list", "u2")
        self.presence_member("presence-py-list", "u2")
        got = self.sdk.channels_info("py-list-")
        self.assertEqual(got, {"channels": {"py-list-1": {}}})
        got = self.sdk.channels_info("presence-py-list", ["user_count"])
        self.assertEqual(got, {"channels": {"presence-py-list": {"user_count": 2}}})

    def test_channel_info_counts_and_cache(self):
        for _ in range(3):
            self.client().subscribe("py-info")
        got = self.sdk.channel_info("py-info", ["subscription_count"])
        self.assertEqual(got, {"occupied": True, "subscription_count": 3})
        self.assertEqual(self.sdk.channel_info("py-empty"), {"occupied": False})

        self.assertEqual(
            self.sdk.channel_info("cache-py-info", ["cache"]),
            {"occupied": False, "cache": None},
        )
        self.sdk.trigger("cache-py-info", "price", {"p": 7})
        got = self.sdk.channel_info("cache-py-info", ["cache"])
        self.assertEqual(json.loads(got["cache"]["data"]), {"p": 7})
        self.assertTrue(0 < got["cache"]["ttl"] <= 1800, got)
        late = self.client()
        late.subscribe("cache-py-info")
        self.assertEqual(json.loads(late.next_event("price")["data"]), {"p": 7})

        with self.assertRaises(pusher.errors.PusherBadRequest):
            self.sdk.channel_info("py-info", ["cache"])

    def test_users_info_lists_unique_presence_users(self):
        self.presence_member("presence-py-users", "7")
        self.presence_member("presence-py-users", "8")
        self.presence_member("presence-py-users", "8")
        got = self.sdk.users_info("presence-py-users")
        self.assertEqual(sorted(u["id"] for u in got["users"]), ["7", "8"])

    def test_terminate_user_connections_and_send_to_user(self):
        def signed_in(user_id):
            c = self.client()
            auth = self.sdk.authenticate_user(c.socket_id, {"id": user_id})
            c.send({"event": "pusher:signin", "data": auth})
            c.next_event("pusher:signin_success")
            c.subscribe(f"#server-to-user-{user_id}")
            return c

        tabs = [signed_in("py-carol") for _ in range(2)]
        other = signed_in("py-dave")
        self.sdk.send_to_user("py-carol", "note", {"hi": 1})
        for t in tabs:
            self.assertEqual(json.loads(t.next_event("note")["data"]), {"hi": 1})

        self.assertEqual(self.sdk.terminate_user_connections("py-carol"), {})
        for t in tabs:
            error = t.next_event("pusher:error")
            self.assertEqual(error["data"]["code"], 4009)
            self.assertEqual(t.recv(), {"close": 4009})
        self.sdk.send_to_user("py-dave", "still-here", {})
        other.next_event("still-here")


if __name__ == "__main__":
    unittest.main(verbosity=2)
