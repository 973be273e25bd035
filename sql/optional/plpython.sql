-- Optional PL/Python admin function that reads what Stripe holds, from psql.
--
-- Installed by `active-series install` after the core schema when plpython3u is available
-- (`--with-plpython` insists, `--without-plpython` skips). Never used on the ingest path:
-- an operator calls it. It only reads: posting is the worker's alone (`active-series
-- worker --once` posts what is due now and exits), so the relay's rules live in one place. It runs the server's python3 and uses only its standard library
-- (urllib), not the stripe SDK.
--
-- The API key and base URL come from server-side settings, never from a table:
--   ALTER ROLE ops SET active_series.stripe_api_key = 'sk_live_...';   -- one role only
--   ALTER ROLE ops SET active_series.stripe_api_base = 'https://api.stripe.com';  -- default
--   active_series.meter_event_name (default active_series), active_series.stripe_timeout (10)
-- A setting is visible to every session it applies to (SHOW), so set the key for the role
-- that runs the function rather than for the whole database.

CREATE EXTENSION IF NOT EXISTS plpython3u;

-- relay_now (up to 0.3.0) posted on its own terms beside the worker: gone.
DROP FUNCTION IF EXISTS active_series.relay_now(bigint);

CREATE OR REPLACE FUNCTION active_series._stripe_call(
    p_method text,
    p_path text,
    p_params jsonb DEFAULT '{}',
    p_idempotency_key text DEFAULT NULL
)
RETURNS jsonb
LANGUAGE plpython3u
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
# One Stripe API call with the key and base from the session's settings; answers
# {"status": http status (0: no answer), "body": the decoded JSON answer or {"error": ...}}.
# Takes no locks.
import json
import socket
import urllib.error
import urllib.parse
import urllib.request


def setting(name, default=None):
    row = plpy.execute(
        "SELECT current_setting('active_series.' || %s, true) AS v" % plpy.quote_literal(name)
    )[0]
    return row["v"] if row["v"] not in (None, "") else default


def flatten(value, prefix, out):
    # Stripe's form encoding: payload[value]=3, items[0][price]=...
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(item, f"{prefix}[{key}]" if prefix else str(key), out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            flatten(item, f"{prefix}[{i}]", out)
    elif isinstance(value, bool):
        out.append((prefix, "true" if value else "false"))
    elif value is not None:
        out.append((prefix, str(value)))
    return out


key = setting("stripe_api_key")
if not key:
    plpy.error(
        "active_series: active_series.stripe_api_key is not set",
        hint="ALTER ROLE <you> SET active_series.stripe_api_key = 'sk_...' (then reconnect)",
    )
base = setting("stripe_api_base", "https://api.stripe.com").rstrip("/")
timeout = float(setting("stripe_timeout", "10"))
form = urllib.parse.urlencode(flatten(json.loads(p_params or "{}"), "", []))
url = base + p_path
data = None
if p_method == "GET":
    url += ("?" + form) if form else ""
else:
    data = form.encode()
request = urllib.request.Request(url, data=data, method=p_method)
request.add_header("Authorization", "Bearer " + key)
request.add_header("Content-Type", "application/x-www-form-urlencoded")
# the Stripe API version these functions speak: the worker's too
# (active_series.relay.stripe_api.STRIPE_API_VERSION; a unit test checks they are equal)
request.add_header("Stripe-Version", "2026-10-28.endive")
if p_idempotency_key:
    request.add_header("Idempotency-Key", p_idempotency_key)
try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.dumps({"status": response.status, "body": json.loads(response.read())})
except urllib.error.HTTPError as exc:
    try:
        body = json.loads(exc.read())
    except ValueError:
        body = {"error": {"message": f"HTTP {exc.code}"}}
    return json.dumps({"status": exc.code, "body": body})
except (urllib.error.URLError, socket.timeout, OSError) as exc:
    reason = getattr(exc, "reason", exc)
    return json.dumps({"status": 0, "body": {"error": {"message": str(reason)}}})
$$;
COMMENT ON FUNCTION active_series._stripe_call(text, text, jsonb, text) IS
'Internal (PL/Python): one Stripe API call with the key and base URL of the session''s active_series.stripe_api_key / stripe_api_base settings.';

CREATE OR REPLACE FUNCTION active_series.stripe_reconcile(p_organization_id bigint)
RETURNS TABLE (
    organization_id bigint,
    stripe_customer_id text,
    period_start timestamptz,
    period_end timestamptz,
    period_usage bigint,
    stripe_value bigint,
    in_sync boolean,
    meter_id text
)
LANGUAGE plpython3u
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
# The organization's exact count of the current period next to the value Stripe's meter
# event summary holds for it (formula last). Summary windows must be whole minutes: the
# period is widened to them, so right after a period starts, before its first event, the
# previous period's final value can show. Takes no locks.
import json
import math


def call(method, path, params):
    plan = plpy.prepare(
        "SELECT active_series._stripe_call($1, $2, $3) AS r", ["text", "text", "jsonb"]
    )
    answer = json.loads(plpy.execute(plan, [method, path, json.dumps(params)])[0]["r"])
    if answer["status"] != 200:
        message = answer["body"].get("error", {}).get("message", "no answer")
        plpy.error(f"active_series: Stripe answered {answer['status']} to {path}: {message}")
    return answer["body"]


plan = plpy.prepare(
    "SELECT b.stripe_customer_id, c.period_start, c.period_end,"
    " extract(EPOCH FROM c.period_start)::float8 AS start_s,"
    " extract(EPOCH FROM c.period_end)::float8 AS end_s,"
    " active_series.period_usage($1, c.period_start) AS usage"
    " FROM active_series.current_period($1) AS c"
    " LEFT JOIN active_series.billing_account AS b ON b.organization_id = $1",
    ["bigint"],
)
row = plpy.execute(plan, [p_organization_id])[0]
customer = row["stripe_customer_id"]
if not customer:
    plpy.error(f"active_series: organization {p_organization_id} has no Stripe customer")
event_name = (
    plpy.execute(
        "SELECT coalesce(nullif(current_setting('active_series.meter_event_name', true), ''),"
        " 'active_series') AS n"
    )[0]["n"]
)
meter = None
after = None
while meter is None:
    params = {"limit": 100, "status": "active"}
    if after:
        params["starting_after"] = after
    page = call("GET", "/v1/billing/meters", params)
    for m in page["data"]:
        if m.get("event_name") == event_name:
            meter = m["id"]
            break
    if meter is None and not page.get("has_more"):
        plpy.error(f"active_series: Stripe has no active meter for event name {event_name!r}")
    if page["data"]:
        after = page["data"][-1]["id"]
start = math.floor(row["start_s"] / 60) * 60
end = math.ceil(row["end_s"] / 60) * 60
summary = call(
    "GET",
    f"/v1/billing/meters/{meter}/event_summaries",
    {"customer": customer, "start_time": start, "end_time": end},
)
value = 0
if summary["data"]:
    value = int(float(summary["data"][0]["aggregated_value"]))
usage = int(row["usage"])
return [
    (
        p_organization_id,
        customer,
        row["period_start"],
        row["period_end"],
        usage,
        value,
        usage == value,
        meter,
    )
]
$$;
COMMENT ON FUNCTION active_series.stripe_reconcile(bigint) IS
'PL/Python: the current period''s exact period_usage next to the value Stripe''s meter event summary holds for the organization''s customer (key and base from the active_series.stripe_api_key / stripe_api_base settings).';

REVOKE ALL ON FUNCTION active_series._stripe_call(text, text, jsonb, text) FROM public;
REVOKE ALL ON FUNCTION active_series.stripe_reconcile(bigint) FROM public;

DO $$
BEGIN
    IF to_regrole('active_series_admin') IS NOT NULL THEN
        GRANT EXECUTE ON FUNCTION active_series._stripe_call(text, text, jsonb, text)
        TO active_series_admin;
        GRANT EXECUTE ON FUNCTION active_series.stripe_reconcile(bigint) TO active_series_admin;
    END IF;
END;
$$;
