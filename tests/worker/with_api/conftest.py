"""The API's fixtures (app on SQLite and Postgres, admin login, store), for the worker's jobs."""

from tests.api.conftest import (  # noqa: F401  (re-exported fixtures)
    _fast_password_hashing,
    admin_headers,
    api,
    app,
    app_sessions,
    db_url,
    enqueued,
    pg_session_url,
    settings,
    store,
)
