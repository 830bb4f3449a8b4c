#!/usr/bin/env python3
"""Writes the committed fuzz seeds: real messages from the specs and tests,
framed as each target reads its input (see the target's doc comment).
Signatures use the fuzz apps' credentials (app 1: app-key / app-secret,
socket id 123.456). Run from anywhere; rewrites fuzz/seeds/<target>/."""

import hashlib
import hmac
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = b"app-secret"
SOCKET = "123.456"
SEP = b"\xff"


def sign(message: str) -> str:
    return hmac.new(SECRET, message.encode(), hashlib.sha256).hexdigest()


def client_frame(payload: bytes, opcode=1, fin=True, mask=b"\x37\xfa\x21\x3d") -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n <= 0xFFFF:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


seeds = {}

# HTTP request heads: limit byte, then the bytes received.
seeds["http_request"] = {
    "upgrade": b"\xff" + b"GET /app/app-key?protocol=7&client=js&version=8.4.0&flash=false HTTP/1.1\r\n"
    b"Host: localhost:6001\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "publish": b"\xff" + b"POST /apps/1/events?auth_key=app-key&auth_timestamp=1700000000&auth_version=1.0"
    b"&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=0000 HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 5, 5\r\n\r\nhello",
    "channels": b"\x40" + b"GET /apps/1/channels?filter_by_prefix=presence-&info=user_count%2Csubscription_count"
    b"&x=a+b%20c HTTP/1.1\r\nHost: h\r\n\r\n",
    "lp_http10": b"\x10" + b"GET /lp?user=u1&page=%2Fgallery&command=%7B%7D HTTP/1.0\r\n"
    b"Connection: keep-alive\r\n\r\n",
    "chunked": b"\xff" + b"POST /apps/1/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}

# WebSocket frames: limit byte (limit = byte * 8), cut byte, the stream.
ping = compact({"event": "pusher:ping", "data": {}})
text = "h\u00e9llo \u2603 world".encode()
seeds["ws_frames"] = {
    "ping_message": b"\x80\x03" + client_frame(ping),
    "fragmented_utf8": b"\x80\x05" + client_frame(text[:2], 1, False)
    + client_frame(b"", 9) + client_frame(text[2:], 0),
    "close_1000": b"\x10\x01" + client_frame((1000).to_bytes(2, "big") + b"bye", 8),
    "binary_and_pong": b"\x20\x02" + client_frame(bytes(range(16)), 2) + client_frame(b"x", 10),
    "len16": b"\xff\x10" + client_frame(b"{" + b"a" * 300 + b"}"),
    "unmasked": b"\x10\x00" + b"\x81\x02hi",
}

# Upgrade handshakes: a request head.
def upgrade(target: str, extra: str = "") -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


seeds["ws_handshake"] = {
    "pusher_js": upgrade("/app/app-key?protocol=7&client=js&version=8.4.0&flash=false"),
    "no_protocol": upgrade("/app/app-key/"),
    "old_protocol": upgrade("/app/app-key?protocol=3"),
    "disabled_app": upgrade("/app/off-key?protocol=7"),
    "incus_socket": upgrade("/socket", "Origin: http://example.com\r\n"),
    "bad_key": b"GET /app/app-key?protocol=7 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n",
}

# Pusher client frames, separated by 0xFF, one session (socket 123.456).
user_data = compact({"id": "u1", "user_info": {"name": "Ann"}, "watchlist": ["u2", "u3"]}).decode()
channel_data = compact({"user_id": "u1", "user_info": {"name": "Ann"}}).decode()
signin = compact({"event": "pusher:signin", "data": {
    "auth": "app-key:" + sign(f"{SOCKET}::user::{user_data}"), "user_data": user_data}})
private = compact({"event": "pusher:subscribe", "data": {
    "channel": "private-chat", "auth": "app-key:" + sign(f"{SOCKET}:private-chat")}})
presence = compact({"event": "pusher:subscribe", "data": {
    "channel": "presence-room", "channel_data": channel_data,
    "auth": "app-key:" + sign(f"{SOCKET}:presence-room:{channel_data}")}})
presence_signed_in = compact({"event": "pusher:subscribe", "data": {
    "channel": "presence-lobby", "auth": "app-key:" + sign(f"{SOCKET}:presence-lobby")}})
client_event = compact({"event": "client-typing", "channel": "private-chat", "data": {"who": "u1"}})
seeds["pusher_client"] = {
    "public": compact({"event": "pusher:subscribe", "data": {"auth": "", "channel": "my-channel"}})
    + SEP + ping + SEP + compact({"event": "pusher:unsubscribe", "data": {"channel": "my-channel"}}),
    "private_and_client_event": private + SEP + client_event,
    "presence": presence,
    "signin_then_presence": signin + SEP + presence_signed_in
    + SEP + compact({"event": "pusher:subscribe", "data": {"channel": "#server-to-user-u1"}}),
    "string_data": compact({"event": "pusher:subscribe",
                            "data": json.dumps({"channel": "cache-news"})}),
    "repeated_key": b'{"event":"pusher:subscribe","data":{"channel":"a","channel":"private-b"}}'
    + SEP + b'{"event":"client-x","channel":"private-chat","data":{"k":1,"\\u006b":2}}',
    "channel_data_alone": channel_data.encode() + SEP + user_data.encode(),
}

# Incus client frames: flags byte (bit 0 lenient, bit 1 client broadcasts).
msg = {"event": "chat", "data": {"text": "hi", "n": 1.5, "list": [1, None, True], "internal_url": "/x"}}
seeds["incus_client"] = {
    "message_user": b"\x02" + compact({"command": {"command": "message", "user": "u2"}, "message": msg}),
    "message_page": b"\x02" + compact({"command": {"command": "message", "page": "/gallery"},
                                       "message": {"event": "e", "data": {}}}) + b" trailing",
    "setpage": b"\x00" + compact({"command": {"command": "setpage", "page": "/gallery/abc"}}),
    "setpresence_lenient": b"\x01" + compact({"command": {"command": "setpresence", "presence": True}}),
    "smuggle": b"\x02" + b'{"command":{"command":"message","command":"pushandroid","user":"u2"},'
    b'"message":{"event":"e","data":{}}}',
    "case_twice": b"\x02" + b'{"command":{"command":"message"},"Command":{"command":"pushios"},'
    b'"message":{"event":"e","data":{}}}',
}

# /lp requests: head and form body.
cmd = compact({"command": {"command": "message", "user": "u1"}, "message": {"event": "e", "data": {"a": 1}}})
form = b"user=u1&page=%2Fp&command=" + "".join(f"%{b:02X}" for b in cmd).encode()
seeds["incus_lp"] = {
    "get": b"GET /lp?user=u1&page=%2Fgallery HTTP/1.1\r\nHost: h\r\n\r\n",
    "no_user": b"GET /lp HTTP/1.1\r\nHost: h\r\n\r\n",
    "form_message_self": b"POST /lp HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    + f"Content-Length: {len(form)}\r\n\r\n".encode() + form,
    "query_setpage": b"GET /lp?user=u2&command=" + "".join(
        f"%{b:02X}" for b in compact({"command": {"command": "setpage", "page": "/q"}})).encode()
    + b" HTTP/1.1\r\nConnection: close\r\n\r\n",
}

# REST signatures: method byte, then path 0xFF query 0xFF body.
body = compact({"name": "my-event", "channels": ["my-channel"], "data": "{\"message\":\"hello\"}"})
seeds["rest_signature"] = {
    "events": b"\x00/apps/1/events" + SEP + b"" + SEP + body,
    "channels_get": b"\x01/apps/1/channels" + SEP + b"filter_by_prefix=presence-&info=user_count" + SEP,
    "php_arrays": b"\x01/apps/1/channels/presence-room/users" + SEP
    + b"channels[]=a&channels[]=b&Info=x%2By+z" + SEP,
    "empty_md5": b"\x81/apps/1/channels/cache-x" + SEP + b"info=cache" + SEP,
    "lowercase_method": b"\x02/users/u1/terminate_connections" + SEP + b"a=%zz&b=%41" + SEP + b"{}",
}

# REST bodies: limits byte (bit 0: small limits), then the body.
seeds["rest_body"] = {
    "trigger": b"\x00" + body,
    "trigger_one_channel": b"\x00" + compact({"name": "e", "channel": "presence-room", "data": "x",
                                               "socket_id": "1234.5678", "info": "user_count"}),
    "batch": b"\x00" + compact({"batch": [
        {"channel": "a", "name": "e1", "data": "1", "info": "subscription_count"},
        {"channel": "private-encrypted-b", "name": "e2", "data": "2"}]}),
    "small_limits": b"\x15" + compact({"name": "evt", "channels": ["a", "b", "a", "c"], "data": "0123456789"}),
    "data_object": b"\x00" + compact({"name": "e", "channels": ["a"], "data": {"not": "a string"}}),
    "channel_query": b"\x00presence-room?info=user_count,subscription_count&auth_key=k",
    "list_query": b"\x00filter_by_prefix=presence-&info=user_count",
}

# Redis Pusher events.
seeds["redis_pusher"] = {
    "string_data": compact({"app_id": "1", "channel": "my-channel", "name": "my-event",
                            "data": "{\"message\":\"hello\"}"}),
    "json_data": compact({"app_id": 1, "channels": ["a", "cache-b", "presence-c"], "name": "e",
                          "data": {"id": 1, "tags": ["x"]}, "socket_id": "1.2"}),
    "disabled": compact({"app_id": "2", "channel": "a", "name": "e", "data": "x"}),
    "repeated_in_data": b'{"app_id":"1","channel":"a","name":"e","data":{"k":1,"k":2}}',
}

# Redis Incus envelopes.
token = "ab" * 32
seeds["redis_incus"] = {
    "message": compact({"command": {"command": "message", "user": "u1", "page": "/p"}, "message": msg}),
    "client_origin": compact({"command": {"command": "message", "user": "u1"},
                              "message": {"event": "e", "data": {}}, "origin": "client"}),
    "client_pushios": compact({"command": {"command": "pushios", "device_token": token, "build": "store"},
                               "message": {"event": "e", "data": {}}, "origin": "client"}),
    "pushios": compact({"command": {"command": "pushios", "device_token": token, "build": "store",
                                    "apns_push_type": "background", "apns_collapse_id": "c"},
                        "message": {"event": "notif", "data": {"message_text": "Hello", "badge_count": 3}}}),
    "push_android": compact({"command": {"command": "push", "push_type": "android",
                                         "registration_ids": "r1, r2"},
                             "message": {"event": "an", "data": {"a": 1}}}),
    "pushormessage": compact({"command": {"command": "pushormessage", "user": "u1", "device_token": token,
                                          "build": "dev", "registration_ids": "r1"},
                              "message": {"push": {"ios": {"event": "pi", "data": {"message_text": "x"}},
                                                   "android": {"event": "pa", "data": {}}},
                                          "websocket": {"event": "w", "data": {}}}}),
    "Case_keys": b'{"Command":{"Command":"MESSAGE","user":null},"MESSAGE":{"event":"e","data":{"x":"\\u003c"}}}',
}

# Config text for ${VAR} expansion (env: A=alpha, EMPTY="", MULTI has a
# newline, REF="${A}", DOLLAR="$").
seeds["config_expand"] = {
    "config": b"server:\n  port: ${PORT:-6001}\n  log: ${LOG:-info}\napps:\n"
    b"  - {id: 1, key: \"${A}\", secret: \"${SECRET:-s$cret}\"}\n",
    "comments": b"# ${UNSET} is fine in a comment\n  # so is ${MULTI}\nk: $${A} and ${REF}\n",
    "errors": b"a: ${A\nb: ${1X}\nc: ${MULTI}\n",
    "dollars": b"k: a$b$ $ ${EMPTY} ${EMPTY:-d} ${A:-${B}} ${DOLLAR}{A}\r\n",
}

# pusher-js HTTP transports: the path, a newline, the xhr_send body.
seeds["xhr"] = {
    "send": b"/pusher/app/app-key/123/abcd1234/xhr_send\n"
    + compact([compact({"event": "pusher:subscribe", "data": {"channel": "my-channel"}}).decode()]),
    "heartbeat": b"/pusher/app/app-key/0/x_y-z/xhr_streaming\n[]",
    "unicode": b"/pusher/app/app-key/999/s/xhr\n" + json.dumps(["h\u00e9llo \u2603 \ud83d\ude00 \"q\" \\ \u0001"]).encode(),
    "bad_path": b"/pusher/app/app-key/1234/s/xhr\n[1, \"x\"]",
    "nested_key": b"/pusher/app/a/b/1/s/xhr_send\n{}",
}

for target, files in seeds.items():
    folder = os.path.join(HERE, target)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
print("wrote", sum(len(f) for f in seeds.values()), "seeds for", len(seeds), "targets")
