"""What schema ``active_series`` is, read from the catalogs, comparable across databases.

Two installs are the same when their snapshots are equal: an upgraded database and a fresh
install of the same version must be, object for object, definition for definition. OIDs and
physical details (column numbers left by dropped columns, storage) are left out; what a
client or the planner sees is kept: definitions as PostgreSQL prints them, column order,
defaults, constraints, indexes, triggers, privileges, comments, storage parameters,
extension membership, the group roles and the recorded version.
"""

from __future__ import annotations

from typing import Any

import psycopg

_NS = "'active_series'::regnamespace"

QUERIES: dict[str, str] = {
    "schema": """
        SELECT n.nspname, n.nspowner::regrole::text, coalesce(n.nspacl::text[], '{}'),
            obj_description(n.oid, 'pg_namespace')
        FROM pg_namespace AS n WHERE n.oid = {ns}
    """,
    "relations": """
        SELECT c.relname, c.relkind, c.relpersistence, c.relowner::regrole::text,
            coalesce(c.reloptions, '{}'), coalesce(c.relacl::text[], '{}'),
            c.relrowsecurity, c.relforcerowsecurity, c.relreplident,
            obj_description(c.oid, 'pg_class'),
            CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END
        FROM pg_class AS c WHERE c.relnamespace = {ns}
    """,
    "columns": """
        SELECT c.relname,
            row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
            a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
            pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
            coalesce(a.attacl::text[], '{}'), col_description(c.oid, a.attnum),
            a.attcollation::regcollation::text
        FROM pg_attribute AS a
        JOIN pg_class AS c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = {ns} AND a.attnum > 0 AND NOT a.attisdropped
    """,
    "constraints": """
        SELECT coalesce(c.relname, t.typname), k.conname, k.contype,
            pg_get_constraintdef(k.oid), k.condeferrable, k.condeferred, k.convalidated,
            obj_description(k.oid, 'pg_constraint')
        FROM pg_constraint AS k
        LEFT JOIN pg_class AS c ON c.oid = k.conrelid
        LEFT JOIN pg_type AS t ON t.oid = k.contypid
        WHERE k.connamespace = {ns}
    """,
    "indexes": """
        SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisunique, i.indisprimary,
            i.indisclustered, i.indisvalid
        FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
        WHERE c.relnamespace = {ns}
    """,
    "functions": """
        SELECT p.oid::regprocedure::text, p.prokind,
            CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END,
            p.proowner::regrole::text, coalesce(p.proacl::text[], '{}'),
            obj_description(p.oid, 'pg_proc')
        FROM pg_proc AS p WHERE p.pronamespace = {ns}
    """,
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled,
            obj_description(t.oid, 'pg_trigger')
        FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
        WHERE c.relnamespace = {ns} AND NOT t.tgisinternal
    """,
    "types": """
        SELECT t.typname, t.typtype, t.typowner::regrole::text,
            coalesce(t.typacl::text[], '{}'), obj_description(t.oid, 'pg_type'),
            (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)
             FROM pg_enum AS e WHERE e.enumtypid = t.oid)
        FROM pg_type AS t
        WHERE t.typnamespace = {ns} AND t.typtype <> 'b'
            AND NOT EXISTS (SELECT FROM pg_class AS c
                            WHERE c.oid = t.typrelid AND c.relkind <> 'c')
    """,
    "sequences": """
        SELECT c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
            s.seqmax, s.seqmin, s.seqcache, s.seqcycle
        FROM pg_sequence AS s JOIN pg_class AS c ON c.oid = s.seqrelid
        WHERE c.relnamespace = {ns}
    """,
    "policies": """
        SELECT c.relname, p.polname, p.polcmd, p.polpermissive,
            pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
        FROM pg_policy AS p JOIN pg_class AS c ON c.oid = p.polrelid
        WHERE c.relnamespace = {ns}
    """,
    "extension": """
        SELECT e.extname, e.extversion, e.extrelocatable, e.extnamespace::regnamespace::text,
            pg_describe_object(d.classid, d.objid, d.objsubid)
        FROM pg_extension AS e
        JOIN pg_depend AS d
            ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
            AND d.deptype = 'e'
        WHERE e.extname = 'active_series'
    """,
    "roles": """
        SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb,
            r.rolcanlogin, r.rolbypassrls, shobj_description(r.oid, 'pg_authid')
        FROM pg_roles AS r WHERE r.rolname LIKE 'active\\_series\\_%'
    """,
    "version": "SELECT version FROM active_series._meta",
}


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[str, ...]]]:
    """Every kind of object of the schema, as sorted rows of text."""
    out = {}
    for kind, query in QUERIES.items():
        rows = conn.execute(query.replace("{ns}", _NS)).fetchall()  # type: ignore[arg-type]
        out[kind] = sorted(tuple("" if v is None else str(v) for v in row) for row in rows)
    return out


def dsn_snapshot(dsn: str) -> dict[str, list[tuple[str, ...]]]:
    with psycopg.connect(dsn) as conn:
        return snapshot(conn)


def differences(
    got: dict[str, list[tuple[str, ...]]], want: dict[str, list[tuple[str, ...]]]
) -> list[str]:
    """Human-readable lines: what ``got`` has that ``want`` lacks (+) and the reverse (-)."""
    lines = []
    for kind in QUERIES:
        extra = sorted(set(got.get(kind, [])) - set(want.get(kind, [])))
        missing = sorted(set(want.get(kind, [])) - set(got.get(kind, [])))
        lines += [f"{kind} + {row}" for row in extra]
        lines += [f"{kind} - {row}" for row in missing]
    return lines
