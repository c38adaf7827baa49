"""schemathesis hooks: send WHIP/WHEP bodies (SDP, trickle-ice-sdpfrag) as text."""

import schemathesis


@schemathesis.serializer("application/sdp", "application/trickle-ice-sdpfrag")
def text_body(ctx, value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")
