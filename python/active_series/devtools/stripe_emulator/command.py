"""``active-series stripe-emulator``: serve the emulator until interrupted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .common import DEFAULT_RATE_LIMIT
from .server import make_server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="active-series stripe-emulator",
        description="Serve a local emulation of Stripe's billing-meter API for tests and demos.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=12111, help="port (default 12111; 0 = any)")
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=DEFAULT_RATE_LIMIT,
        help="requests per second allowed by the token bucket; 0 disables it (default 25)",
    )
    parser.add_argument("--burst", type=float, default=None, help="bucket size (default = rate)")
    parser.add_argument(
        "--allow-unknown-customers",
        action="store_true",
        help="accept meter events for customers the emulator does not know",
    )
    parser.add_argument(
        "--unaligned-summaries",
        action="store_true",
        help="allow event summary windows that are not aligned to minutes",
    )
    parser.add_argument(
        "--enforce-customer-concurrency",
        action="store_true",
        help="answer 429 to a meter event while another for the same customer is in flight",
    )
    parser.add_argument("--api-key", default=None, help="accept only this API key")
    parser.add_argument("--quiet", action="store_true", help="do not log requests to stderr")
    args = parser.parse_args(argv)
    server = make_server(
        args.host,
        args.port,
        quiet=args.quiet,
        rate_limit=args.rate_limit or None,
        rate_burst=args.burst,
        require_known_customer=not args.allow_unknown_customers,
        minute_aligned_summaries=not args.unaligned_summaries,
        enforce_customer_concurrency=args.enforce_customer_concurrency,
        api_key=args.api_key,
    )
    sys.stderr.write(f"stripe emulator listening on {server.base_url}\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
