"""``active-series stripe setup``: the meter, the tiered price and, optionally, customers
and subscriptions for the organizations, in Stripe (or the emulator), idempotently; the
work is :mod:`active_series.billing_setup`'s."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import psycopg

from active_series.errors import CommandError, ExitCode
from active_series.relay.stripe_api import STRIPE_API_VERSION


def add_commands(
    sub: Any,
    common: argparse.ArgumentParser,
    meter_opts: argparse.ArgumentParser,
    organization_id: Callable[[str], int],
) -> None:
    """``stripe setup`` under the ``active-series`` subcommands."""
    from active_series.billing_setup import (
        DEFAULT_LOOKUP_KEY,
        DEFAULT_PLAN,
        DEFAULT_PRODUCT_NAME,
    )

    p = sub.add_parser("stripe", help="set up the Stripe side of billing")
    stripe_sub = p.add_subparsers(dest="stripe_command", required=True, metavar="ACTION")
    sp = stripe_sub.add_parser(
        "setup",
        parents=[common, meter_opts],  # the worker's meter options, with their defaults
        help="create or find the meter, the tiered price and (optionally) customers and "
        "subscriptions; STRIPE_API_KEY from the environment",
    )
    sp.set_defaults(func=cmd_stripe_setup)
    tiers = sp.add_mutually_exclusive_group()
    tiers.add_argument(
        "--tiers",
        metavar="SPEC",
        help="graduated tiers UP_TO:UNIT[+FLAT],... in cents (default 10:0+2900,25:100,inf:50:"
        " 29.00 up to 10 series, 1.00 each to 25, 0.50 each above)",
    )
    tiers.add_argument(
        "--tiers-file", metavar="FILE", help="the tiers as a JSON list of Stripe tier objects"
    )
    sp.add_argument("--currency", default="usd", help="the price's currency (default usd)")
    sp.add_argument(
        "--product-name",
        default=DEFAULT_PRODUCT_NAME,
        help="the name of the product created with the price (default %(default)r)",
    )
    sp.add_argument(
        "--lookup-key",
        default=DEFAULT_LOOKUP_KEY,
        help="the price's lookup_key, by which a later run finds it (default %(default)s)",
    )
    sp.add_argument(
        "--replace-price",
        action="store_true",
        help="when the price under the lookup key differs, create a new one and move the "
        "lookup key to it (existing subscriptions keep the old price)",
    )
    sp.add_argument(
        "--customers",
        action="store_true",
        help="give every billed organization (plan other than free) a customer and a "
        "subscription (needs active_series_admin)",
    )
    sp.add_argument(
        "--organization",
        type=organization_id,
        action="append",
        default=[],
        metavar="N",
        help="give this organization a customer and a subscription, and put it on --plan "
        "if it is on free (repeatable; needs active_series_admin)",
    )
    sp.add_argument(
        "--backdate",
        action="store_true",
        help="start a new subscription at the organization's current period start "
        "(backdate_start_date), its first cycle ending at the period's end "
        "(billing_cycle_anchor), so the series reported so far in the period are billed "
        "(default: from now on, as Stripe starts a subscription)",
    )
    sp.add_argument(
        "--plan", default=DEFAULT_PLAN, help="the plan of newly billed organizations (pro)"
    )
    sp.add_argument(
        "--max-network-retries",
        type=int,
        default=2,
        help="retries of the Stripe SDK for 5xx, timeouts and connection errors",
    )


def cmd_stripe_setup(args: argparse.Namespace) -> int:
    import stripe

    from active_series import billing_setup as b
    from active_series.cli.commands import connect

    api_key = os.environ.get("STRIPE_API_KEY", "")
    if not api_key:
        raise CommandError(
            "STRIPE_API_KEY is not set (export the Stripe secret key)", ExitCode.STRIPE_KEY
        )
    try:
        tiers = (
            b.read_tiers_file(args.tiers_file)
            if args.tiers_file
            else b.parse_tiers(args.tiers)
            if args.tiers
            else list(b.DEFAULT_TIERS)
        )
    except ValueError as exc:
        raise CommandError(str(exc), ExitCode.INPUT) from None
    plan = b.Plan(
        event_name=args.meter_event_name,
        customer_key=args.meter_customer_key,
        value_key=args.meter_value_key,
        tiers=tiers,
        currency=args.currency.lower(),
        product_name=args.product_name,
        lookup_key=args.lookup_key,
        replace_price=args.replace_price,
        organizations=list(dict.fromkeys(args.organization)),
        billed=args.customers,
        plan=args.plan,
        backdate=args.backdate,
    )
    client = stripe.StripeClient(
        api_key,
        base_addresses={"api": args.stripe_api_base},
        stripe_version=STRIPE_API_VERSION,
        max_network_retries=args.max_network_retries,
    )
    conn: psycopg.Connection[Any] | None = connect(args) if plan.links else None
    try:
        b.setup(client, conn, plan, say=lambda line: print(line, flush=True))
    except stripe.AuthenticationError as exc:
        raise CommandError(
            f"Stripe refused STRIPE_API_KEY: {exc.user_message or exc}", ExitCode.STRIPE_KEY
        ) from None
    except stripe.APIConnectionError:
        raise CommandError(
            f"cannot reach Stripe at {args.stripe_api_base}", ExitCode.FAILURE
        ) from None
    except stripe.StripeError as exc:
        raise CommandError(f"Stripe: {exc.user_message or exc}", ExitCode.FAILURE) from None
    finally:
        if conn is not None:
            conn.close()
    return ExitCode.OK
