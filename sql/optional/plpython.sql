-- Optional PL/Python admin functions that talk to Stripe from psql.
--
-- Installed by `active-series install` after the core schema when plpython3u is available
-- (`--with-plpython` insists, `--without-plpython` skips). Never used on the ingest path:
-- an operator calls them. They run the server's python3 and use only its standard library
-- (urllib), not the stripe SDK.
--
-- The API key and base URL come from server-side settings, never from a table:
--   ALTER ROLE ops SET active_series.stripe_api_key = 'sk_live_...';   -- one role only
--   ALTER ROLE ops SET active_series.stripe_api_base = 'https://api.stripe.com';  -- default
--   active_series.meter_event_name (default active_series), active_series.stripe_timeout (10)
-- A setting is visible to every session it applies to (SHOW), so set the key for the role
-- that runs these functions rather than for the whole database.

CREATE EXTENSION IF NOT EXISTS plpython3u;

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

CREATE OR REPLACE FUNCTION active_series.relay_now(p_organization_id bigint)
RETURNS text
LANGUAGE plpython3u
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
# Post the organization's current-period count to Stripe now, as the worker would: under
# its _relay_state row lock (NOWAIT: a worker holding it is relaying the organization), the
# post written to the ledger as pending first, a deterministic identifier and idempotency
# key, the period's next timestamp (_relay_timestamp: after its held one, the second half
# of the period's tail kept for posts after its end). Leaves ended periods and resending pending posts to the
# worker. Locks the organization's _relay_state row until the caller's transaction ends:
# call it in autocommit, so the ledger row commits with the post.
# SECURITY DEFINER: it writes the relay's internal tables (_relay_state, _ledger), on which
# the operators allowed to call it have no rights.
import json
import math


def one(query, types, args):
    rows = plpy.execute(plpy.prepare(query, types), args)
    return rows[0] if rows else None


org = p_organization_id
plpy.execute(plpy.prepare("SELECT active_series._require_organization($1)", ["bigint"]), [org])
account = one(
    "SELECT stripe_customer_id, plan FROM active_series.billing_account"
    " WHERE organization_id = $1",
    ["bigint"],
    [org],
)
if account is None or account["plan"] == "free" or not account["stripe_customer_id"]:
    return "not billed: the organization has plan free or no Stripe customer"
customer = account["stripe_customer_id"]
plpy.execute(
    plpy.prepare(
        "INSERT INTO active_series._relay_state (organization_id) VALUES ($1)"
        " ON CONFLICT (organization_id) DO NOTHING",
        ["bigint"],
    ),
    [org],
)
try:
    with plpy.subtransaction():
        state = one(
            "SELECT parked_reason FROM active_series._relay_state"
            " WHERE organization_id = $1 FOR UPDATE NOWAIT",
            ["bigint"],
            [org],
        )
except plpy.spiexceptions.LockNotAvailable:
    return "busy: a worker is relaying this organization right now"
if state["parked_reason"] is not None:
    return (
        f"parked: {state['parked_reason']} "
        f"(after the fix: SELECT active_series.relay_resume({org}))"
    )
if one(
    "SELECT 1 AS x FROM active_series._ledger WHERE organization_id = $1 AND status = 'pending'",
    ["bigint"],
    [org],
):
    return "pending posts: the worker resends them first"
cur = one(
    "SELECT c.period_start, c.period_end, w.first_second, w.last_second,"
    " active_series.period_usage($1, c.period_start) AS usage,"
    " extract(EPOCH FROM clock_timestamp())::float8 AS now"
    " FROM active_series._period_at($1, clock_timestamp()) AS c"
    " CROSS JOIN active_series._relay_window(c.period_start, c.period_end) AS w",
    ["bigint"],
    [org],
)
usage = int(cur["usage"])
held = one(
    "SELECT value, status, event_timestamp FROM active_series._relay_held($1, $2, $3)",
    ["text", "timestamptz", "timestamptz"],
    [customer, cur["period_start"], cur["period_end"]],
)
if held is not None and int(held["value"]) == usage and held["status"] == "sent":
    return f"in sync: Stripe holds {usage}"
post = one(
    "SELECT event_timestamp, due_second FROM active_series._relay_timestamp($1, $2, $3, $4)",
    ["bigint", "bigint", "bigint", "bigint"],
    [
        None if held is None else held["event_timestamp"],
        cur["first_second"],
        cur["last_second"],
        math.floor(cur["now"]),
    ],
)
ts = post["event_timestamp"]
if ts is None:
    return "deferred: the period's tail is kept for its final post (the worker's)"
if post["due_second"] > math.floor(cur["now"]):
    wait = post["due_second"] - math.floor(cur["now"])
    return f"deferred: an event for this period was sent moments ago; try again in {wait} s"
ident = one(
    "SELECT active_series._relay_identifier($1, $2, $3) AS i",
    ["text", "bigint", "bigint"],
    [customer, ts, usage],
)["i"]
plpy.execute(
    plpy.prepare(
        "INSERT INTO active_series._ledger (organization_id, stripe_customer_id, period_start,"
        " period_end, value, event_timestamp, identifier) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        ["bigint", "text", "timestamptz", "timestamptz", "bigint", "bigint", "text"],
    ),
    [org, customer, cur["period_start"], cur["period_end"], usage, ts, ident],
)
event_name = plpy.execute(
    "SELECT coalesce(nullif(current_setting('active_series.meter_event_name', true), ''),"
    " 'active_series') AS n"
)[0]["n"]
params = {
    "event_name": event_name,
    "payload": {"stripe_customer_id": customer, "value": str(usage)},
    "identifier": ident,
    "timestamp": ts,
}
answer = json.loads(
    one(
        "SELECT active_series._stripe_call('POST', '/v1/billing/meter_events', $1, $2) AS r",
        ["jsonb", "text"],
        [json.dumps(params), ident],
    )["r"]
)
status = answer["status"]
message = answer["body"].get("error", {}).get("message", "") if status != 200 else ""
duplicate = status == 400 and "already exists" in message
if status == 200 or duplicate:
    plpy.execute(
        plpy.prepare(
            "UPDATE active_series._ledger SET status = 'sent', attempts = attempts + 1,"
            " updated = clock_timestamp() WHERE identifier = $1",
            ["text"],
        ),
        [ident],
    )
    plpy.execute(
        plpy.prepare(
            "UPDATE active_series._relay_state SET last_event_timestamp ="
            " greatest(last_event_timestamp, $1), updated_at = now() WHERE organization_id = $2",
            ["bigint", "bigint"],
        ),
        [ts, org],
    )
    return f"posted {usage} for the period from {cur['period_start']} (timestamp {ts})"
permanent = status in (400, 401, 402, 403, 404)
plpy.execute(
    plpy.prepare(
        "UPDATE active_series._ledger SET status = $2, attempts = attempts + 1,"
        " last_error = $3, updated = clock_timestamp() WHERE identifier = $1",
        ["text", "text", "text"],
    ),
    [ident, "failed" if permanent else "pending", f"HTTP {status}: {message}"],
)
if permanent:
    return f"refused by Stripe (HTTP {status}): {message}"
return f"no answer from Stripe ({message or status}): left pending; the worker resends it"
$$;
COMMENT ON FUNCTION active_series.relay_now(bigint) IS
'PL/Python: post the organization''s current-period count to Stripe now, through the relay''s ledger (the worker''s rules: strictly increasing timestamps per customer within a period); returns what happened. Call it in autocommit.';

REVOKE ALL ON FUNCTION active_series._stripe_call(text, text, jsonb, text) FROM public;
REVOKE ALL ON FUNCTION active_series.stripe_reconcile(bigint) FROM public;
REVOKE ALL ON FUNCTION active_series.relay_now(bigint) FROM public;

DO $$
BEGIN
    IF to_regrole('active_series_admin') IS NOT NULL THEN
        GRANT EXECUTE ON FUNCTION active_series._stripe_call(text, text, jsonb, text)
        TO active_series_admin;
        GRANT EXECUTE ON FUNCTION active_series.stripe_reconcile(bigint) TO active_series_admin;
        GRANT EXECUTE ON FUNCTION active_series.relay_now(bigint) TO active_series_admin;
    END IF;
END;
$$;
