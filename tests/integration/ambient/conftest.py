"""What the tests of ambient SQL transactions (instrumented, and untold) share:
the application database of `tests._sqlapp` (SQLite or PostgreSQL), its
engines, a registered store and a recording dispatcher."""

from tests._sqlapp import (
    async_engine_fixture,  # noqa: F401
    db_url_fixture,  # noqa: F401
    disp_fixture,  # noqa: F401
    engine_fixture,  # noqa: F401
    store_fixture,  # noqa: F401
    sub_fixture,  # noqa: F401
)
