-- The analysts' read-only login: `make run` and `make test` apply it (scripts/services.sh),
-- and so does the compose file's PostgreSQL (once, when its data volume is new, from
-- /docker-entrypoint-initdb.d): `analyst` / `analyst`, a member
-- of lastseen_analyst, the role the migrations grant SELECT on every table. The read API
-- (the producer's READ_DATABASE_URL) and the status page read through it.
-- Change the password for anything but a local trial.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lastseen_analyst') THEN
        CREATE ROLE lastseen_analyst NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        CREATE ROLE analyst LOGIN PASSWORD 'analyst' IN ROLE lastseen_analyst;
    END IF;
END
$$;
