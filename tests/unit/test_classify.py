"""How the relay reads a failed Stripe call: an answer it could not read is never final."""

from __future__ import annotations

import stripe
from active_series.relay.stripe_api import Outcome, classify


def test_a_4xx_whose_body_could_not_be_read_is_resent_not_parked() -> None:
    # what stripe-python raises for a cut JSON body or a proxy's page, whatever the status
    for status in (400, 404, 500):
        garbled = stripe.APIError('Invalid response body from API: {"err', http_status=status)
        assert classify(garbled)[0] is Outcome.TRANSIENT


def test_stripes_own_refusals_keep_their_meaning() -> None:
    duplicate = stripe.InvalidRequestError(
        "An event already exists with identifier as-cus_1-5-3.", None, http_status=400
    )
    assert classify(duplicate)[0] is Outcome.DUPLICATE
    no_customer = stripe.InvalidRequestError("No such customer: 'cus_x'", None, http_status=400)
    assert classify(no_customer)[0] is Outcome.PERMANENT
    assert classify(stripe.RateLimitError("slow down", http_status=429))[0] is Outcome.RATE_LIMITED
    assert classify(stripe.AuthenticationError("bad key", http_status=401))[0] is Outcome.GLOBAL
