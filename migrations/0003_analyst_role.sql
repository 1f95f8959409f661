-- A read-only group role for analysts: SELECT on every table and view of this schema, now
-- and later. Login users join it (`make run` creates `analyst`; see the README).
-- The role is cluster-wide and migrations of several databases may run at once, so its
-- creation tolerates a concurrent twin.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lastseen_analyst') THEN
        CREATE ROLE lastseen_analyst NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO lastseen_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO lastseen_analyst;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO lastseen_analyst;
