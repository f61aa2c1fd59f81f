"""The `tq` command's settings: one table for flags, environment variables and docs.

Every setting has a flag and an environment variable; a flag wins over the
variable, which wins over the default. The same table renders the
configuration table of docs/cli.md (`tq config --markdown`), so the two
cannot drift apart. This module imports neither click nor rich.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

# Kinds of values, as parsed from a flag or an environment variable.
STR, INT, FLOAT, BOOL, LIST, DB_URL = "str", "int", "float", "bool", "list", "url"


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One configurable value.

    `key` names it in code (the keyword of the command function), `flag` on
    the command line, `env` in the environment (the first of `env` that is
    set is read). `kind` says how text becomes a value: LIST is comma
    separated; BOOL takes 1/0, true/false, yes/no, on/off; DB_URL is a
    SQLAlchemy URL or a SQLite file path (see `database_url`).
    """

    key: str
    flag: str
    env: tuple[str, ...]
    default: Any
    kind: str
    group: str
    help: str
    choices: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def env_names(self) -> str:
        return " or ".join(self.env)


def _s(
    key: str,
    default: Any,
    kind: str,
    group: str,
    help: str,
    *,
    env: str | tuple[str, ...] | None = None,
    flag: str | None = None,
    choices: tuple[str, ...] = (),
    metavar: str | None = None,
) -> Setting:
    envs = (env,) if isinstance(env, str) else env or ("TQ_" + key.upper(),)
    return Setting(
        key=key,
        flag=flag or "--" + key.replace("_", "-"),
        env=envs,
        default=default,
        kind=kind,
        group=group,
        help=help,
        choices=choices,
        metavar=metavar,
    )


DISPATCHER, DATABASE, SWEEPER, WORKER, SERVER, DASHBOARD = (
    "dispatcher",
    "database",
    "sweeper",
    "worker",
    "server",
    "dashboard",
)
GROUP_TITLES = {
    DISPATCHER: "Dispatcher (where tasks go and how pushes come back)",
    DATABASE: "Databases and backends",
    SWEEPER: "Sweeper",
    WORKER: "Database-queue workers",
    SERVER: "Serving (`tq dev`, `tq serve`)",
    DASHBOARD: "Dashboard (`tq dashboard`; see docs/dashboard.md)",
}

SETTINGS: tuple[Setting, ...] = (
    # The dispatcher: applied to the app's dispatcher when set.
    _s("cloud_project", None, STR, DISPATCHER,
       "Google Cloud project of the queues; short queue names live there. "
       "`tq dev` uses `tq-dev` when unset."),
    _s("cloud_region", None, STR, DISPATCHER,
       "Cloud Tasks location of the queues (e.g. `us-central1`). `tq dev` uses `local` when "
       "unset."),
    _s("target_host", None, STR, DISPATCHER,
       "Host pushes go to (`default_target_host`), e.g. `orders-abc.a.run.app`. `tq dev` "
       "uses its own address."),
    _s("target_scheme", None, STR, DISPATCHER,
       "`https`, or `http` for pushes to a dev server or emulator on loopback. Unset: "
       "the dispatcher's (https); `tq dev` uses http.", choices=("https", "http")),
    _s("push_as", None, STR, DISPATCHER,
       "Service account Cloud Tasks signs push OIDC tokens as; the push endpoint accepts "
       "its tokens."),
    _s("push_audience", None, STR, DISPATCHER,
       "Audience of push tokens; unset: `https://<target host>`."),
    _s("authorized_pushers", (), LIST, DISPATCHER,
       "More service accounts (comma separated) whose push tokens are accepted."),
    _s("namespace", None, STR, DISPATCHER,
       "Prefix of deduplication keys, so deployments can share queues."),
    _s("app_engine", None, BOOL, DISPATCHER,
       "Build App Engine task requests and trust `X-AppEngine-*` headers. Unset: the "
       "dispatcher's (off)."),
    _s("cloudtasks_endpoint", None, STR, DISPATCHER,
       "`host:port` of a Cloud Tasks emulator (plain gRPC, no credentials). Unset: the real "
       "service with Application Default Credentials.", metavar="HOST:PORT"),
    _s("dispatcher", None, STR, DISPATCHER,
       "The app's dispatcher as `module:attribute`. Unset: the `dispatcher` attribute of the "
       "app's module if it is a `tq.Dispatcher`, else `tq.default`.", metavar="MODULE:ATTR"),
    # Databases.
    _s("database_url", None, DB_URL, DATABASE,
       "SQLAlchemy URL of the SQL database (outbox tables and the database queue), or a "
       "SQLite file path; `postgresql://` means psycopg 3. `tq dev`, `tq serve` and `tq "
       "worker` export it to the app as a URL.", env="TQ_DATABASE_URL",
       flag="--db", metavar="URL"),
    _s("spanner_database", None, STR, DATABASE,
       "Spanner outbox database, `projects/P/instances/I/databases/D`.",
       flag="--spanner", metavar="NAME"),
    _s("backend", "auto", STR, DATABASE,
       "Where tasks go (`tq serve`, `tq sweep`, `tq parked replay --now`) and where `queues` "
       "and `tasks` commands look: `dbqueue` (the database queue in `--db`), `cloudtasks`, "
       "or `auto`: Cloud Tasks when a cloud project is set (`--cloud-project` or the app's), "
       "else the database queue when `--db` is set.",
       choices=("auto", "dbqueue", "cloudtasks")),
    _s("queue_yaml", None, STR, DATABASE,
       "A `queue.yaml` whose queues are created or updated in the database queue at start.",
       metavar="PATH"),
    _s("tombstone_window_s", 3600.0, FLOAT, DATABASE,
       "Seconds a finished task's name stays taken in the database queue (deduplication)."),
    _s("marker_batch_size", 1000, INT, DATABASE,
       "Done markers deleted per batch (one short transaction each) by `tq markers expire`."),
    # The sweeper.
    _s("sweep_mode", "inproc", STR, SWEEPER,
       "`inproc` (the whole sweep in this process) or `distributed` (one sweep task per "
       "shard through the `tq-sweep` queue, run by any replica).",
       choices=("inproc", "distributed")),
    _s("sweep_interval", 60.0, FLOAT, SWEEPER,
       "Seconds between sweeps of `tq dev`, `tq sweep --loop` and `tq serve --sweep-loop`."),
    _s("sweep_shards", 16, INT, SWEEPER, "Partitions per store, and scans run at once."),
    _s("tasks_per_scan", 2048, INT, SWEEPER, "Most reminder IDs one scan reads."),
    _s("secondary_scan_shards", 16, INT, SWEEPER, "Most follow-up scans one scan plans."),
    _s("max_depth", 2, INT, SWEEPER,
       "Deepest follow-up level that still plans follow-ups; deeper backlogs wait for the "
       "next sweep."),
    _s("scan_timeout_s", None, FLOAT, SWEEPER,
       "Seconds an async scan waits for its read before splitting into follow-ups "
       "(unset: no limit)."),
    _s("submit_batch_size", 512, INT, SWEEPER, "Reminders read back and submitted as one batch."),
    _s("submit_concurrent_batches", 8, INT, SWEEPER, "Batches held at once across a sweep."),
    _s("submit_concurrency", 32, INT, SWEEPER, "Submit calls in flight at once across a sweep."),
    _s("lease_duration_s", 60.0, FLOAT, SWEEPER,
       "Seconds a scan's lease on its key range lasts."),
    _s("use_leases", True, BOOL, SWEEPER,
       "Take leases on key ranges, so concurrent sweepers split the work."),
    _s("sweep_queue", "tq-sweep", STR, SWEEPER, "Queue of sweep tasks (distributed mode)."),
    # Database-queue workers.
    _s("workers", 1, INT, WORKER, "Worker loops in this process."),
    _s("concurrency", 16, INT, WORKER, "Pushes in flight per worker."),
    _s("queues", (), LIST, WORKER, "Queues served (comma separated); unset: all."),
    _s("poll_interval", 0.1, FLOAT, WORKER,
       "Seconds between looks for due tasks when idle (tasks added in-process wake workers "
       "at once)."),
    _s("batch_size", 32, INT, WORKER, "Most tasks leased per queue per round."),
    _s("lease_grace_s", 30.0, FLOAT, WORKER,
       "A lease lasts the dispatch deadline plus this; then the task is retried elsewhere."),
    _s("dispatch_deadline_s", 600.0, FLOAT, WORKER,
       "Seconds to wait for a push's response when the task sets no deadline."),
    _s("push_url", None, STR, WORKER,
       "Push over HTTP to this base URL (tasks with relative URLs), or to each task's own URL "
       "when set to `task`. Unset: push into the app in-process when there is one.",
       metavar="URL"),
    _s("signer", None, STR, WORKER,
       "`module:attribute` of `signer(email, audience) -> token` minting OIDC tokens for "
       "pushes over HTTP.", metavar="MODULE:ATTR"),
    # Serving.
    _s("host", "127.0.0.1", STR, SERVER, "Interface to listen on (`0.0.0.0` in containers)."),
    _s("port", 8080, INT, SERVER, "Port to listen on.", env=("TQ_PORT", "PORT")),
    _s("authorized_launchers", (), LIST, SERVER,
       "Service accounts (comma separated) allowed to call `/internal/tasks/c/sweep` (Cloud "
       "Scheduler's). Read by the app, which passes it to `tq.asgi.app(authorized_launchers=...)` "
       "(the example does)."),
    _s("log_level", "info", STR, SERVER, "Log level: debug, info, warning, error.",
       choices=("debug", "info", "warning", "error")),
    _s("happy_path", "inline", STR, SERVER,
       "How `tq dev`, `tq serve` and `tq worker` submit the tasks of a committed "
       "transaction: `inline` (before the transaction helper returns) or `background` "
       "(threads of the process, drained at shutdown; not where the platform throttles the "
       "CPU between requests; see docs/outbox-sql.md).", choices=("inline", "background")),
    # The dashboard.
    _s("dashboard_token", None, STR, DASHBOARD,
       "Token of the operator role (looks and acts). Unset, with no other access setting: "
       "`tq dashboard` makes one and prints its sign-in address."),
    _s("dashboard_viewer_token", None, STR, DASHBOARD,
       "Token of the read-only role."),
    _s("dashboard_operators", (), LIST, DASHBOARD,
       "Google identities (emails, comma separated) with the operator role; needs "
       "`--dashboard-audience` or `--dashboard-iap-audience`."),
    _s("dashboard_viewers", (), LIST, DASHBOARD,
       "Google identities (emails, comma separated) with the read-only role."),
    _s("dashboard_audience", None, STR, DASHBOARD,
       "Audience of the Google ID tokens sent as `Authorization: Bearer` (turns on OIDC)."),
    _s("dashboard_iap_audience", None, STR, DASHBOARD,
       "Identity-Aware Proxy's audience (`/projects/NUMBER/global/backendServices/ID` or "
       "`/projects/NUMBER/apps/PROJECT`): trusts IAP's signed `X-Goog-IAP-JWT-Assertion`."),
    _s("dashboard_secret", None, STR, DASHBOARD,
       "Key signing sign-in cookies and form tokens; give replicas the same one (unset: "
       "random per process)."),
)  # fmt: skip

BY_KEY = {s.key: s for s in SETTINGS}

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


def database_url(text: str) -> str:
    """The SQLAlchemy URL `text` stands for: the one rule for `--db` and `TQ_DATABASE_URL`.

    A value without `://` is a SQLite file path (`orders.db` ->
    `sqlite:///orders.db`); `postgresql://` and `postgres://` mean psycopg 3
    (`postgresql+psycopg://`); any other URL is kept as it is.
    """
    text = text.strip()
    if "://" not in text:
        return f"sqlite:///{text}"
    for bare in ("postgresql://", "postgres://"):
        if text.startswith(bare):
            return "postgresql+psycopg://" + text[len(bare) :]
    return text


def parse(setting: Setting, text: str) -> Any:
    """The value of `text` (from a flag or the environment); ValueError if invalid."""
    kind = setting.kind
    if kind == DB_URL:
        return database_url(text) if text.strip() else None  # empty: unset
    if kind == LIST:
        return tuple(p.strip() for p in text.split(",") if p.strip())
    if kind == BOOL:
        word = text.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError(f"{text!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")
    value: Any = text
    if kind == INT:
        value = int(text)
    elif kind == FLOAT:
        value = float(text)
    if setting.choices and value not in setting.choices:
        raise ValueError(f"{text!r} is not one of {', '.join(setting.choices)}")
    return value


def from_env(environ: Mapping[str, str], keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The settings (all, or `keys`) from `environ`, defaults where unset.

    For code that configures itself outside the `tq` command (e.g. an app
    served by plain uvicorn). Raises ValueError naming the variable at fault.
    """
    out: dict[str, Any] = {}
    for key in keys if keys is not None else BY_KEY:
        s = BY_KEY[key]
        out[key] = s.default
        for name in s.env:
            if name in environ:
                try:
                    out[key] = parse(s, environ[name])
                except ValueError as e:
                    raise ValueError(f"{name}: {e}") from None
                break
    return out


def _default_text(s: Setting) -> str:
    if s.default is None or s.default == ():
        return "unset"
    if s.kind == BOOL:
        return "true" if s.default else "false"
    return f"`{s.default}`"


def markdown_table() -> str:
    """The configuration table of docs/cli.md, by group."""
    lines: list[str] = []
    for group, title in GROUP_TITLES.items():
        lines += [f"### {title}", "", "| flag | environment | default | what it does |"]
        lines.append("|---|---|---|---|")
        for s in SETTINGS:
            if s.group != group:
                continue
            env = ", ".join(f"`{e}`" for e in s.env)
            lines.append(f"| `{s.flag}` | {env} | {_default_text(s)} | {s.help} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
