"""schemathesis hooks: send WHIP/WHEP bodies (SDP, trickle-ice-sdpfrag) as text."""

import schemathesis


@schemathesis.serializer("application/sdp", "application/trickle-ice-sdpfrag")
def text_body(ctx, value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


def _guard_lambda_descriptions():
    """CPython 3.11's ast module can fail with "AST constructor recursion depth mismatch"
    while hypothesis parses a big source file to describe a lambda in a strategy's repr.
    The description is cosmetic; fall back to a plain one instead of crashing the run."""
    from hypothesis.internal import lambda_sources

    original = lambda_sources._lambda_description

    def guarded(f, *args, **kwargs):
        try:
            return original(f, *args, **kwargs)
        except (SystemError, RecursionError):
            return "lambda: <source not shown>"

    lambda_sources._lambda_description = guarded


_guard_lambda_descriptions()
