"""Checks the AsyncAPI document that a running corelay serves at /asyncapi.

1. It validates against the official AsyncAPI 3.0.0 JSON Schema (shipped in the npm
   package @asyncapi/specs; the path is an argument).
2. Every local $ref resolves, every operation's messages belong to its channel, and every
   `{param}` of a channel address is declared (and nothing else).
3. Every message example matches its payload schema.
4. Real traffic: a scripted peer-to-peer relay session on each channel. Every packet the
   client sends must match a message of the channel's `receive` operation, every packet
   the server sends must match a message of its `send` operation, and every message of
   the `send` operation must be seen at least once.

Usage: check_asyncapi.py BASE_URL ASYNCAPI_SCHEMA CORELAY_BIN  (JWT_SECRET set)
Exit status 1 with the reasons on any violation.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.request

import jsonschema
from websockets.sync.client import connect

FAILURES = []


def fail(msg):
    FAILURES.append(msg)
    print("FAIL:", msg, file=sys.stderr)


def resolve(doc, ref):
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node = doc
    for key in ref[2:].split("/"):
        key = key.replace("~1", "/").replace("~0", "~")
        node = node[key]
    return node


def deref(doc, node):
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(doc, node["$ref"])
    return node


def all_refs(node, path="#"):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield path, v
            else:
                yield from all_refs(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from all_refs(v, f"{path}/{i}")


def payload_validator(doc, message_ref):
    """A validator for a message's payload; `$ref`s resolve within the document."""
    message = deref(doc, {"$ref": message_ref})
    pointer = message_ref
    # The payload of the message the reference ends at.
    while True:
        node = resolve(doc, pointer)
        if isinstance(node, dict) and "$ref" in node:
            pointer = node["$ref"]
        else:
            break
    root = dict(doc)
    root["$ref"] = pointer + "/payload"  # draft 7: siblings of $ref are ignored
    assert "payload" in message, f"{message_ref} has no payload"
    return jsonschema.Draft7Validator(root)


def static_checks(doc, official_schema):
    validator = jsonschema.Draft7Validator(official_schema)
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in e.absolute_path)
        fail(f"official AsyncAPI 3.0.0 schema: at /{path}: {e.message[:300]}")
    if doc.get("asyncapi") != "3.0.0":
        fail(f"asyncapi is {doc.get('asyncapi')!r}, expected 3.0.0")

    for where, ref in all_refs(doc):
        try:
            resolve(doc, ref)
        except (KeyError, IndexError, TypeError, AssertionError):
            fail(f"{where}: $ref {ref} does not resolve")

    for op_id, op in doc.get("operations", {}).items():
        channel_ref = op["channel"]["$ref"]
        for m in op.get("messages", []):
            if not m["$ref"].startswith(channel_ref + "/messages/"):
                fail(f"operation {op_id}: message {m['$ref']} is not one of {channel_ref}'s")

    for ch_id, ch in doc.get("channels", {}).items():
        in_address = set(re.findall(r"\{([^}]+)\}", ch.get("address") or ""))
        declared = set((ch.get("parameters") or {}).keys())
        if in_address != declared:
            fail(f"channel {ch_id}: address parameters {in_address} != declared {declared}")

    for name in doc.get("components", {}).get("messages", {}):
        ref = f"#/components/messages/{name}"
        v = payload_validator(doc, ref)
        examples = deref(doc, {"$ref": ref}).get("examples", [])
        if not examples:
            fail(f"message {name} has no example")
        for ex in examples:
            for e in v.iter_errors(ex.get("payload")):
                fail(f"message {name}: example {ex.get('name')!r}: {e.message[:300]}")


class Channel:
    """The messages of one channel's operations, to validate packets against."""

    def __init__(self, doc, channel_id):
        self.id = channel_id
        self.address = doc["channels"][channel_id]["address"]
        self.ops = {"receive": {}, "send": {}}
        for op in doc["operations"].values():
            if op["channel"]["$ref"] == f"#/channels/{channel_id}":
                for m in op["messages"]:
                    self.ops[op["action"]][m["$ref"]] = payload_validator(doc, m["$ref"])
        self.seen = set()
        if not self.ops["receive"] or not self.ops["send"]:
            fail(f"channel {channel_id} lacks a receive or a send operation")

    def check(self, action, packet, label):
        matched = [ref for ref, v in self.ops[action].items() if v.is_valid(packet)]
        if not matched:
            fail(f"{self.address}: {label}: {json.dumps(packet)} matches no message of "
                 f"the {action} operation")
        if action == "send":
            self.seen.update(matched)
        return packet


class Peer:
    def __init__(self, stack, channel, url, token, bearer=False):
        self.channel = channel
        headers = {}
        if bearer:
            headers["Authorization"] = f"Bearer {token}"
        else:
            url += f"?token={token}"
        self.ws = stack.enter_context(
            connect(url, additional_headers=headers, open_timeout=10, close_timeout=2))

    def send(self, packet, valid=True):
        if valid:
            self.channel.check("receive", packet, "client packet")
        self.ws.send(json.dumps(packet))

    def send_raw(self, data):
        self.ws.send(data)

    def expect(self, event):
        text = self.ws.recv(timeout=10)
        packet = json.loads(text)
        self.channel.check("send", packet, f"server packet (expected {event})")
        got = packet.get("Header", {}).get("Event")
        if got != event:
            fail(f"{self.channel.address}: expected a {event} packet, got {text}")
        return packet

    def close(self):
        self.ws.close()


def pkt(event, user, room, payload=""):
    return {"Header": {"Event": event, "UserId": user, "RoomId": room}, "Payload": payload}


def session(base_ws, channel, path, tokens, room):
    with contextlib.ExitStack() as stack:
        scripted_session(stack, base_ws + path, channel, path, tokens, room)


def scripted_session(stack, url, channel, path, tokens, room):
    alice = Peer(stack, channel, url, tokens["alice"])
    bob = Peer(stack, channel, url, tokens["bob"], bearer=True)
    # A packet before connect.
    alice.send(pkt("ping", "alice", room))
    alice.expect("error")
    alice.send(pkt("connect", "alice", room))
    first = alice.expect("connect")
    if first["Payload"] != "true":
        fail(f"{path}: the first member is not the initiator: {first}")
    bob.send(pkt("connect", "", room))  # UserId may be left to the token
    bob.expect("connect")
    alice.expect("connect")
    offer = pkt("broadcast", "alice", room, json.dumps({"type": "offer", "sdp": "v=0"}))
    alice.send(offer)
    relayed = bob.expect("broadcast")
    if relayed != offer:
        fail(f"{path}: broadcast not relayed unchanged: {relayed}")
    bob.send(pkt("ping", "bob", room))
    pong = bob.expect("ping")
    if sorted(json.loads(pong["Payload"])) != ["alice", "bob"]:
        fail(f"{path}: ping lists {pong['Payload']}")
    # Refused packets: the session lives on.
    alice.send_raw("not json")
    alice.expect("error")
    alice.send(pkt("dance", "alice", room), valid=False)
    alice.expect("error")
    alice.send(pkt("broadcast", "mallory", room), valid=False)
    alice.expect("error")
    alice.send_raw(b"\x00\x01")
    alice.expect("error")
    bob.send(pkt("disconnect", "bob", room))
    alice.expect("disconnect")
    # A second connect after disconnect is fine; one without is not.
    bob.send(pkt("connect", "bob", room))
    bob.expect("connect")
    alice.expect("connect")
    bob.send(pkt("connect", "bob", room))
    bob.expect("error")
    bob.close()
    alice.expect("disconnect")
    alice.close()


class MscPeer:
    """A client of the request/response dialect; events that arrive while it waits for a
    response are kept, and every server message is checked against the document."""

    def __init__(self, stack, channel, url, token):
        self.channel = channel
        self.ws = stack.enter_context(
            connect(url + f"?token={token}", open_timeout=10, close_timeout=2))
        self.next = 0
        self.events = []

    def _recv(self):
        msg = json.loads(self.ws.recv(timeout=10))
        self.channel.check("send", msg, "server message")
        return msg

    def request(self, kind, data, ok=True):
        self.next += 1
        rid = str(self.next)
        req = {"type": kind, "data": data, "requestId": rid}
        if ok:  # requests meant to fail may be outside the document on purpose
            self.channel.check("receive", req, "client request")
        self.ws.send(json.dumps(req))
        while True:
            msg = self._recv()
            if msg.get("type") == "response" and msg.get("requestId") == rid:
                if ok and "error" in msg:
                    fail(f"/ws: {kind} failed: {msg}")
                if not ok and "error" not in msg:
                    fail(f"/ws: {kind} should have failed: {msg}")
                return msg.get("data")
            self.events.append(msg)

    def expect(self, kind):
        for i, e in enumerate(self.events):
            if e["type"] == kind:
                return self.events.pop(i)
        msg = self._recv()
        while msg["type"] != kind:
            self.events.append(msg)
            msg = self._recv()
        return msg

    def close(self):
        self.ws.close()


def msc_session(base_ws, channel, tokens):
    """The request/response dialect: join, produce, consume, close, leave (no media)."""
    room = "room-msc"
    with contextlib.ExitStack() as stack:
        url = base_ws + channel.address
        alice = MscPeer(stack, channel, url, tokens["alice"])
        bob = MscPeer(stack, channel, url, tokens["bob"])
        alice.request("join-room", {"roomId": room})
        bob.request("join-room", {"roomId": room})
        alice.expect("peer-joined")
        send = alice.request("create-transport", {"direction": "send"})
        params = {
            "mid": "0",
            "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}],
            "encodings": [{"ssrc": 1234}],
            "rtcp": {"cname": "alice"},
        }
        produced = alice.request(
            "produce", {"transportId": send["id"], "kind": "video", "rtpParameters": params})
        bob.expect("new-producer")
        recv = bob.request("create-transport", {"direction": "recv"})
        bob.request("consume", {"transportId": recv["id"], "producerId": produced["id"]})
        bob.request("dance", {}, ok=False)
        bob.request("resume-consumer", {"consumerId": "c-nope"}, ok=False)
        alice.request("close-producer", {"producerId": produced["id"]})
        bob.expect("consumer-closed")
        bob.expect("producer-closed")
        alice.close()
        bob.expect("peer-left")
        bob.close()


# A minimal but complete audio offer (ICE credentials, fingerprint, opus): enough for the
# server to negotiate; nothing needs to connect for the messages checked here.
def audio_offer(direction):
    return "\r\n".join([
        "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
        "a=group:BUNDLE 0", "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx", "a=ice-options:trickle",
        "a=fingerprint:sha-256 " + ":".join(["00", "11", "22", "33", "44", "55", "66", "77",
                                             "88", "99", "AA", "BB", "CC", "DD", "EE", "FF"] * 2),
        "a=setup:actpass", "a=mid:0", "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=" + direction, "a=msid:- track1", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1", "a=ssrc:1111 cname:abc", ""])


class TypedPeer:
    """A client of a dialect whose messages have a "type"; events are kept while waiting."""

    def __init__(self, stack, channel, url):
        self.channel = channel
        self.ws = stack.enter_context(connect(url, open_timeout=10, close_timeout=2))
        self.kept = []

    def send(self, msg, valid=True):
        if valid:
            self.channel.check("receive", msg, "client message")
        self.ws.send(json.dumps(msg))

    def expect(self, kind):
        for i, m in enumerate(self.kept):
            if m.get("type") == kind:
                return self.kept.pop(i)
        while True:
            m = json.loads(self.ws.recv(timeout=10))
            self.channel.check("send", m, "server message")
            if m.get("type") == kind:
                return m
            self.kept.append(m)


def pubsub_session(base_ws, channel, tokens):
    room = "room-pubsub"
    with contextlib.ExitStack() as stack:
        url = base_ws + channel.address
        alice = TypedPeer(stack, channel, url)
        bob = TypedPeer(stack, channel, url)
        alice.send({"type": "auth", "token": tokens["alice"]})
        alice.expect("auth-ok")
        bob.send({"type": "auth", "token": tokens["bob"]})
        bob.expect("auth-ok")
        alice.send({"type": "join", "roomName": room})
        bob.send({"type": "join", "roomName": room})
        alice.send({"type": "publish-offer", "roomName": room, "offer": audio_offer("sendonly")})
        answer = alice.expect("publish-answer")
        publisher = bob.expect("new-publisher")["publisherId"]
        if publisher != answer.get("publisherId"):
            fail(f"/pubsub: new-publisher {publisher} is not the publisher {answer}")
        bob.send({"type": "subscribe-request", "roomName": room, "publisherId": publisher})
        bob.expect("subscribe-offer")
        bob.send({"type": "subscribe-request", "roomName": room, "publisherId": 987654})
        bob.expect("error")
        alice.ws.close()
        bob.expect("publisher-left")
        bob.ws.close()


def connect_session(base_ws, channel, tokens):
    url = base_ws + channel.address + f"?token={tokens['alice']}&conversation=conv-1"
    with contextlib.ExitStack() as stack:
        ws = stack.enter_context(connect(url, open_timeout=10, close_timeout=2))
        offer = audio_offer("sendrecv")
        channel.check("receive", offer, "client offer")
        ws.send(offer)
        answer = ws.recv(timeout=10)
        channel.check("send", answer, "server answer")
    with contextlib.ExitStack() as stack:
        ws = stack.enter_context(connect(url, open_timeout=10, close_timeout=2))
        ws.send("not an offer")
        channel.check("send", json.loads(ws.recv(timeout=10)), "server error")


def main():
    base, schema_path, binary = sys.argv[1:4]
    with urllib.request.urlopen(base + "/asyncapi", timeout=10) as r:
        if r.status != 200:
            fail(f"/asyncapi answered {r.status}")
        doc = json.load(r)
    with open(schema_path, encoding="utf-8") as f:
        official = json.load(f)
    static_checks(doc, official)

    with urllib.request.urlopen(base + "/health", timeout=10) as r:
        version = json.load(r)["version"]
    if doc["info"]["version"] != version:
        fail(f"info.version {doc['info']['version']} != server version {version}")

    tokens = {
        user: subprocess.run([binary, "token", "--user", user, "--ttl", "10m"], check=True,
                             capture_output=True, text=True, env=os.environ).stdout.strip()
        for user in ("alice", "bob")
    }
    base_ws = "ws" + base[len("http"):]
    channels = {cid: Channel(doc, cid) for cid in doc["channels"]}
    for cid, ch in channels.items():
        if ch.address == "/ws":
            msc_session(base_ws, ch, tokens)
        elif ch.address == "/pubsub":
            pubsub_session(base_ws, ch, tokens)
        elif ch.address == "/connect":
            connect_session(base_ws, ch, tokens)
        elif ch.address.startswith("/p2p"):
            path = ch.address.replace("{namespace}", "team-a")
            session(base_ws, ch, path, tokens, "room-" + cid)
        else:
            fail(f"channel {cid} ({ch.address}): no live scenario for it in {__file__}")
            continue
        for ref in ch.ops["send"]:
            if ref not in ch.seen:
                fail(f"{ch.address}: the server never sent {ref} in the scripted session")
        print(f"asyncapi: {ch.address}: {len(ch.seen)} server messages seen, all conform")

    if FAILURES:
        print(f"asyncapi: {len(FAILURES)} violation(s)", file=sys.stderr)
        sys.exit(1)
    print("asyncapi: document valid (official 3.0.0 schema), references, examples and live "
          "traffic conform")


if __name__ == "__main__":
    main()
