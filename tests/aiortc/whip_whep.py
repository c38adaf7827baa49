"""WHIP and WHEP against a running corelay with aiortc, a WebRTC implementation that shares
no code with the server (str0m) or the browsers of the e2e tests.

One aiortc peer publishes a synthetic video (a bright bar moving over a dark picture,
320x240 at 30 fps) and silence over WHIP; a second aiortc peer views the room over WHEP
and must decode >= 30 video frames within 20 s, with the bar moving (so the frames are the
publisher's pictures, decoded). Then both resources are DELETEd and the server must report
no producers left.

    python whip_whep.py --base http://127.0.0.1:3001 --secret JWT_SECRET [--room R]
    python whip_whep.py --base ... --publish-token JWT --view-token JWT --room R

Exit status 0 when everything held, 1 with the reason otherwise.
"""

import argparse
import asyncio
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urljoin

import aioice.ice
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import VideoFrame

# corelay listens on loopback here; aioice leaves 127.0.0.1 out of its host candidates.
aioice.ice.get_host_addresses = lambda *args, **kwargs: ["127.0.0.1"]

WIDTH, HEIGHT = 320, 240
BAR = 16  # bar width in pixels
STEP = 4  # pixels the bar moves per frame


class Failure(Exception):
    pass


class MovingBar(VideoStreamTrack):
    """Dark picture with a bright vertical bar that moves STEP pixels per frame."""

    def __init__(self):
        super().__init__()
        self.count = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=WIDTH, height=HEIGHT, format="yuv420p")
        y, u, v = frame.planes
        x = (self.count * STEP) % (WIDTH - BAR)
        row = bytearray([16]) * y.line_size
        row[x : x + BAR] = bytes([235]) * BAR
        y.update(bytes(row) * HEIGHT)
        u.update(bytes([128]) * u.buffer_size)
        v.update(bytes([128]) * v.buffer_size)
        frame.pts = pts
        frame.time_base = time_base
        self.count += 1
        return frame


def bar_position(frame):
    """Column of the brightest 16-pixel run in the middle row of a decoded frame."""
    plane = frame.planes[0]
    data = bytes(plane)
    row = data[(frame.height // 2) * plane.line_size :][: frame.width]
    best, best_x = -1, 0
    for x in range(0, len(row) - BAR, 2):
        s = sum(row[x : x + BAR])
        if s > best:
            best, best_x = s, x
    return best_x


def http(method, url, token=None, body=None, content_type=None, timeout=10):
    """(status, headers, body text) of one request, any status."""
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content_type:
        headers["Content-Type"] = content_type
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


async def ahttp(*args, **kwargs):
    return await asyncio.to_thread(http, *args, **kwargs)


def mint(secret, user, room):
    import jwt  # PyJWT

    now = int(time.time())
    claims = {"userId": user, "userName": f"aiortc {user}", "roomId": room, "exp": now + 600}
    return jwt.encode(claims, secret, algorithm="HS256")


async def wait_for(what, pred, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise Failure(f"{what}: not within {timeout} s")
        await asyncio.sleep(interval)


async def post_offer(pc, url, token):
    """POSTs pc's offer (aiortc gathers every candidate in setLocalDescription: no
    trickle) and applies the answer. Returns (absolute resource URL, answer SDP)."""
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, body = await ahttp("POST", url, token, pc.localDescription.sdp, "application/sdp")
    if status != 201:
        raise Failure(f"POST {url}: {status} {body}")
    location = {k.lower(): v for k, v in headers.items()}.get("location")
    if not location:
        raise Failure(f"POST {url}: 201 without Location")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return urljoin(url, location), body


async def run(args):
    base = args.base.rstrip("/")
    room = args.room or f"aiortc-{int(time.time() * 1000):x}"
    pub_token = args.publish_token or mint(args.secret, "aiortc-pub", room)
    view_token = args.view_token or mint(args.secret, "aiortc-view", room)

    publisher = RTCPeerConnection()
    viewer = RTCPeerConnection()
    try:
        # --- publish over WHIP ---
        video = MovingBar()
        publisher.addTransceiver(video, direction="sendonly")
        publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        whip_url, answer = await post_offer(publisher, f"{base}/whip/{room}", pub_token)
        print(f"WHIP 201 {whip_url} ({answer.count(chr(10) + 'm=')} m-lines in the answer)")
        await wait_for("publisher connected", lambda: publisher.connectionState == "connected", 10)

        # --- view over WHEP ---
        got = {"video": 0, "audio": 0, "first_frame": None, "size": None, "bars": set(), "errors": []}

        async def consume(track):
            try:
                while True:
                    frame = await track.recv()
                    got[track.kind] += 1
                    if track.kind == "video":
                        if got["first_frame"] is None:
                            got["first_frame"] = time.monotonic()
                        got["size"] = (frame.width, frame.height)
                        if got["video"] % 3 == 0:
                            got["bars"].add(bar_position(frame))
            except MediaStreamError:
                pass
            except Exception as e:  # reported by the main check
                got["errors"].append(f"{track.kind}: {e!r}")

        tasks = []
        viewer.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
        viewer.addTransceiver("video", direction="recvonly")
        viewer.addTransceiver("audio", direction="recvonly")
        t0 = time.monotonic()
        whep_url, _ = await post_offer(viewer, f"{base}/whep/{room}", view_token)
        print(f"WHEP 201 {whep_url}")
        try:
            await wait_for(
                f"viewer decodes >= {args.frames} video frames",
                lambda: got["video"] >= args.frames or got["errors"],
                args.timeout,
            )
        except Failure as e:
            raise Failure(f"{e}: {got['video']} video, {got['audio']} audio frames, "
                          f"viewer {viewer.connectionState}, errors {got['errors']}") from None
        if got["errors"]:
            raise Failure(f"viewer track errors: {got['errors']}")
        join_ms = round((got["first_frame"] - t0) * 1000)
        await asyncio.sleep(0.5)
        if got["size"] != (WIDTH, HEIGHT):
            raise Failure(f"decoded frames are {got['size']}, the publisher sends {(WIDTH, HEIGHT)}")
        if len(got["bars"]) < 5:
            raise Failure(f"the bar does not move in the decoded frames: positions {sorted(got['bars'])}")
        if got["audio"] == 0:
            raise Failure("no audio frame arrived")
        print(f"join-time-ms whep-aiortc: {join_ms}")
        print(f"viewer: {got['video']} video frames {got['size'][0]}x{got['size'][1]} "
              f"(bar seen at {len(got['bars'])} positions), {got['audio']} audio frames")

        # --- end both sessions ---
        for url, token in ((whep_url, view_token), (whip_url, pub_token)):
            status, _, body = await ahttp("DELETE", url, token)
            if status != 200:
                raise Failure(f"DELETE {url}: {status} {body}")
        print("DELETE 200 for both resources")

        def producers():
            status, _, body = http("GET", f"{base}/health")
            return sum(s["producers"] for s in json.loads(body)["shards"]) if status == 200 else -1

        deadline = time.monotonic() + 5
        while (n := await asyncio.to_thread(producers)) != 0:
            if time.monotonic() > deadline:
                raise Failure(f"/health still counts {n} producers after the DELETEs")
            await asyncio.sleep(0.1)
        print("/health: no producers left")
        for t in tasks:
            t.cancel()
    finally:
        await viewer.close()
        await publisher.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="server base URL, e.g. http://127.0.0.1:3001")
    p.add_argument("--secret", help="JWT_SECRET of the server (tokens are minted here)")
    p.add_argument("--publish-token", help="token for WHIP (instead of --secret)")
    p.add_argument("--view-token", help="token for WHEP (instead of --secret)")
    p.add_argument("--room", help="room id (default: a fresh one; required with tokens scoped to a room)")
    p.add_argument("--frames", type=int, default=30, help="video frames the viewer must decode")
    p.add_argument("--timeout", type=float, default=20, help="seconds to get them")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    if not args.secret and not (args.publish_token and args.view_token):
        p.error("give --secret, or both --publish-token and --view-token")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        asyncio.run(asyncio.wait_for(run(args), args.timeout + 40))
    except Failure as e:
        print(f"whip_whep: FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    except asyncio.TimeoutError:
        print("whip_whep: FAIL: ran over its time limit", file=sys.stderr)
        sys.exit(1)
    print("whip_whep: ok")


if __name__ == "__main__":
    main()
