"""The HTTP floor (issue 19): the plainest DRF submit this stack allows, served like the project's API.

One view: DRF token authentication (DRF's own, a query per request), a serializer validating the body,
one INSERT in a transaction, one Celery message sent on commit (to a queue no worker reads). Its own
settings (`bench.http_floor.settings`), no middleware but Django's CommonMiddleware, the project's
database and broker. `bench/http_bench.py` serves it with the same gunicorn flags as the Procfile's web
line and compares the project's submit route against it in the same run.
"""

QUEUE = "bench-http-floor"  # no worker reads it; the bench purges it
TABLE = """
CREATE TABLE IF NOT EXISTS bench_http_floor_job (
    id uuid PRIMARY KEY, thread_id text NOT NULL, owner_id bigint NOT NULL, payload jsonb NOT NULL,
    created_at bigint NOT NULL)
"""
