"""The official Python server SDK (`pusher` on PyPI) against a real stapes.

Starts the binary named by STAPES_BIN on a free loopback port with two
shards and an app with a numeric id (the SDK refuses others), and checks
what the SDK sends and reads back: trigger, trigger_batch, channels_info,
channel_info (with info=cache), users_info, terminate_user_connections
(which the SDK posts to /users/{id}/terminate_connections, without the app)
and send_to_user. Events are observed by small WebSocket subscribers
written here on the standard library, so the test needs nothing but the SDK.

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
        cls.port = free_port()
        cls.dir = tempfile.TemporaryDirectory(prefix="stapes-python-")
        config = os.path.join(cls.dir.name, "config.yml")
        with open(config, "w") as f:
            f.write(
                f"server:\n  host: {HOST}\n  port: {cls.port}\n  shards: 2\n"
                f"apps:\n  - id: {APP_ID}\n    key: {KEY}\n    secret: {SECRET}\n"
            )
        env = dict(os.environ, STAPES_SHARDS="2")
        cls.server = subprocess.Popen(
            [binary, "--config", config], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            if cls.server.poll() is not None:
                raise RuntimeError(f"stapes exited: {cls.server.stderr.read().decode()}")
            try:
                socket.create_connection((HOST, cls.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    cls.server.kill()
                    raise RuntimeError("stapes did not accept connections within 10 s")
                time.sleep(0.05)
        cls.sdk = pusher.Pusher(
            app_id=APP_ID, key=KEY, secret=SECRET, ssl=False, host=HOST, port=cls.port,
            timeout=WAIT_S,
        )

    @classmethod
    def tearDownClass(cls):
        cls.server.terminate()
        try:
            cls.server.wait(timeout=10)
        finally:
            if cls.server.poll() is None:
                cls.server.kill()
            cls.server.stderr.close()
            cls.dir.cleanup()

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
