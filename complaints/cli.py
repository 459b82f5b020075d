"""`complaints`: run the system, one service, migrations, channel keys and staff tokens, the
policy, the audit of the decision log and the review of policy exceptions."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.markup import escape

from complaints import summaries, system
from services.intake import admin
from services.resolution import admin as resolution_admin
from shared import auth, deadletters, devinfra, kafka, outbox
from shared.events import Channel
from shared.settings import Settings

app = typer.Typer(
    help="Event-driven complaint resolution.", no_args_is_help=True, add_completion=False
)
keys_app = typer.Typer(help="Channel keys: create, list, revoke.", no_args_is_help=True)
staff_app = typer.Typer(help="Staff: the directory and bearer tokens.", no_args_is_help=True)
routes_app = typer.Typer(
    help="The routing table: which team gets which complaints.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(staff_app, name="staff")
app.add_typer(routes_app, name="routes")
deadletters_app = typer.Typer(
    help="Records a consumer refused, kept whole: list, show, replay.", no_args_is_help=True
)
outbox_app = typer.Typer(
    help="Events the broker refused for good (parked): list, release.", no_args_is_help=True
)
app.add_typer(deadletters_app, name="deadletters")
app.add_typer(outbox_app, name="outbox")
policy_app = typer.Typer(
    help="The authority and clock policy: show, load a new version, activate one.",
    no_args_is_help=True,
)
audit_app = typer.Typer(help="The decision log's hash chains.", no_args_is_help=True)
exceptions_app = typer.Typer(
    help="Remedies granted as policy exceptions, for review.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.add_typer(exceptions_app, name="exceptions")

err = Console(stderr=True)
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    runner: Callable[[Coroutine[Any, Any, T]], T] = asyncio.run
    try:
        import uvloop  # asyncpg and uvicorn are markedly faster on it
    except ImportError:
        pass
    else:
        runner = uvloop.run
    try:
        return runner(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (asyncpg.InvalidCatalogNameError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        err.print(
            f"[red]the database refused us[/]: {escape(str(exc))}; create it, or point "
            "COMPLAINTS_DATABASE_URL at one that exists and lets this user in"
        )
        raise typer.Exit(1) from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "faststream", "complaints.broker"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.INFO)


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log at debug level.")]


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="Add simulated web and phone traffic.")] = False,
    verbose: Verbose = False,
) -> None:
    """Run the whole system on this machine (embedded broker and database when unconfigured)."""
    _logging(verbose)
    _run(_up(demo))


async def _up(demo: bool) -> None:
    from complaints import demo as demo_traffic

    infra = await system.resolve(Settings(), smtp_sink=True)
    tasks: list[asyncio.Task[None]] = []
    out = Console(soft_wrap=True)

    async def stopping() -> None:
        if tasks:
            out.print("stopping…")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()

    try:
        settings = infra.settings
        await system.migrate_all(settings)
        secret = auth.resolve_secret(settings)
        keys = await _dev_keys(settings)
        if demo:
            await admin.seed_demo_staff(settings)
        await admin.ensure_console_member(settings)
        token = await admin.token_for(
            settings,
            secret,
            admin.CONSOLE_MEMBER,
            ttl_s=settings.staff_token_max_lifetime_s,
        )
        base = settings.base_url()

        def ready() -> None:
            out.print("[bold green]complaints is up[/]  (Ctrl-C stops everything)")
            out.print(f"  API        {base}  (OpenAPI: {base}/openapi.json, docs: {base}/docs)")
            out.print(f"  stream     {base}/v1/stream  (staff token below)")
            out.print(f"  health     {base}/healthz  {base}/readyz")
            for note in infra.notes:
                out.print(f"  {note}")
            for channel, key in keys.items():
                out.print(f"  key {channel:<6} {key}")
            out.print(f"  staff token ({admin.CONSOLE_MEMBER}, a manager): {token}")
            if demo:
                out.print("[bold]demo traffic[/]: web complaints over HTTP, phone over Kafka")
                listening = asyncio.Event()  # the traffic starts once its events can be printed
                tasks.append(
                    asyncio.create_task(
                        demo_traffic.traffic(settings, keys=keys, say=out.print, after=listening)
                    )
                )
                tasks.append(
                    asyncio.create_task(
                        demo_traffic.follow(
                            settings, token=token, say=out.print, listening=listening
                        )
                    )
                )
                tasks.append(
                    asyncio.create_task(demo_traffic.staff(settings, token=token, say=out.print))
                )

        services = system.build_services(settings, system.NAMES, secret=secret)
        await system.serve(settings, services, on_ready=ready, on_stopping=stopping)
    finally:
        await stopping()
        infra.close()
        err.print("stopped")


async def _dev_keys(settings: Settings) -> dict[str, str]:
    """Web and phone keys kept in the state directory, recreated if no longer valid."""
    path = devinfra.state_dir() / "dev-keys.json"
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    result = {}
    for channel in ("web", "phone"):
        key = known.get(channel)
        if key is None or await admin.channel_of(settings, key) != channel:
            key = await admin.create_key(settings, channel)
        result[channel] = key
    path.write_text(json.dumps(result))
    path.chmod(0o600)
    return result


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="intake, resolution or notify")],
    verbose: Verbose = False,
) -> None:
    """Run one service alone (several copies may share the broker and database)."""
    if service not in system.NAMES:
        err.print(f"[red]unknown service {service!r}[/]; choose one of: {', '.join(system.NAMES)}")
        raise typer.Exit(2)
    _logging(verbose)

    async def main() -> None:
        infra = await system.resolve(Settings(), smtp_sink=False)
        try:
            await system.migrate_all(infra.settings, [service])
            secret = auth.resolve_secret(infra.settings)
            base = infra.settings.base_url()
            await system.serve(
                infra.settings,
                system.build_services(infra.settings, [service], secret=secret),
                on_ready=lambda: err.print(f"{service} serving on {base}"),
            )
        finally:
            infra.close()

    _run(main())


@app.command()
def migrate(verbose: Verbose = False) -> None:
    """Apply database migrations (safe to run twice, and concurrently)."""
    _logging(verbose)

    async def main() -> None:
        applied = await system.migrate_all(await _settings_with_database())
        for name, versions in applied.items():
            err.print(f"{name}: {', '.join(versions) if versions else 'up to date'}")

    _run(main())


async def _settings_with_database() -> Settings:
    """The settings, with the configured database or else the local or embedded one."""
    settings = Settings()
    db = await devinfra.resolve_database(settings.database_url)
    return settings.model_copy(update={"database_url": db.url})


def _admin(call: Callable[[Settings], Coroutine[Any, Any, T]], service: str = "intake") -> T:
    """Run a service's administration use case against the configured (or local) database."""

    async def main() -> T:
        settings = await _settings_with_database()
        await system.migrate_all(settings, [service])  # a fresh database works at once
        return await call(settings)

    try:
        return _run(main())
    except (admin.AdminError, resolution_admin.AdminError) as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None


@keys_app.command("create")
def keys_create(
    channel: Annotated[Channel, typer.Option(help="The channel the key is for.")],
    rate: Annotated[
        float | None,
        typer.Option(
            help="Submissions a second this key may make on average (default: "
            "COMPLAINTS_KEY_RATE_PER_S)."
        ),
    ] = None,
    burst: Annotated[
        int | None,
        typer.Option(help="Submissions it may make at once (default: COMPLAINTS_KEY_BURST)."),
    ] = None,
) -> None:
    """Create a channel key and print it alone on stdout."""
    key = _admin(lambda s: admin.create_key(s, channel.value, rate_per_s=rate, burst=burst))
    sys.stdout.write(key + "\n")


def _limit(row: dict[str, Any]) -> str:
    rate = f"{row['rate_per_s']:g}/s" + (" (default)" if row["rate_is_default"] else "")
    burst = f"burst {row['burst']}" + (" (default)" if row["burst_is_default"] else "")
    return f"{rate}, {burst}"


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List channel keys (ids, channels and limits; the keys themselves are never stored)."""
    rows = _admin(admin.list_keys)
    if as_json:
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        return
    for row in rows:
        state = f"revoked {row['revoked_at']:%Y-%m-%d}" if row["revoked_at"] else "live"
        sys.stdout.write(
            f"{row['key_id']}  {row['channel']:<6} {row['created_at']:%Y-%m-%d %H:%M}  "
            f"{state:<18} {_limit(row)}\n"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `keys list`).")],
) -> None:
    """Revoke a channel key; its holder gets 401 from then on."""
    if not _admin(lambda s: admin.revoke_key(s, key_id)):
        err.print(f"[red]no live key with id {key_id}[/]")
        raise typer.Exit(1)
    err.print(f"revoked {key_id}")


def _languages(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise typer.BadParameter("use true or false")


@staff_app.command("add")
def staff_add(
    staff_id: Annotated[str, typer.Argument(help="The member's id.")],
    name: Annotated[str, typer.Option(help="Full name.")],
    team: Annotated[str, typer.Option(help="Team, e.g. customer-care.")],
    role: Annotated[str, typer.Option(help="agent, senior_agent, supervisor, manager, director")],
    languages: Annotated[str, typer.Option(help="Comma-separated, e.g. en,tr.")] = "en",
    capacity: Annotated[
        int, typer.Option(help="Open-case load they can carry (a low case weighs 1, critical 5).")
    ] = 20,
) -> None:
    """Add a staff member to the directory."""
    _admin(
        lambda s: admin.add_staff(
            s,
            staff_id=staff_id,
            name=name,
            team=team,
            role=role,
            languages=_languages(languages) or ["en"],
            capacity=capacity,
        )
    )
    err.print(f"added {staff_id} to {team}")


@staff_app.command("set")
def staff_set(
    staff_id: Annotated[str, typer.Argument(help="The member's id.")],
    available: Annotated[str | None, typer.Option(help="true or false.")] = None,
    name: Annotated[str | None, typer.Option()] = None,
    team: Annotated[str | None, typer.Option()] = None,
    role: Annotated[str | None, typer.Option()] = None,
    languages: Annotated[str | None, typer.Option(help="Comma-separated.")] = None,
    capacity: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Change a member; an unavailable member's unacknowledged cases are reassigned."""
    flag = None if available is None else _bool(available)
    moved = _admin(
        lambda s: admin.set_staff(
            s,
            staff_id,
            available=flag,
            name=name,
            team=team,
            role=role,
            languages=_languages(languages),
            capacity=capacity,
        )
    )
    err.print(f"updated {staff_id}" + (f"; reassigned {len(moved)} case(s)" if moved else ""))


@staff_app.command("list")
def staff_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The staff directory."""
    rows = _admin(admin.list_staff)
    if as_json:
        keys = ("id", "name", "team", "role", "languages", "capacity", "available", "active")
        sys.stdout.write(json.dumps([{k: r[k] for k in keys} for r in rows]) + "\n")
        return
    for r in rows:
        state = "available" if r["available"] else "away"
        sys.stdout.write(
            f"{r['id']:<12} {r['team']:<18} {r['role']:<13} {','.join(r['languages']):<9} "
            f"cap {r['capacity']:<3} {state:<9} {r['name']}\n"
        )


@routes_app.command("list")
def routes_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The routing table, in the order rules are tried (first match wins)."""
    rows = _admin(admin.list_routes)
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    for r in rows:
        match = " ".join(f"{f}={r[f]}" for f in admin.ROUTE_FIELDS if r[f]) or "(anything)"
        sys.stdout.write(f"{r['rule_id']:>4}  prio {r['priority']:<4} {match:<48} → {r['team']}\n")


@routes_app.command("add")
def routes_add(
    team: Annotated[str, typer.Option(help="Team the matching complaints go to.")],
    priority: Annotated[int, typer.Option(help="Lower is tried first.")] = 100,
    category: Annotated[str | None, typer.Option()] = None,
    channel: Annotated[str | None, typer.Option()] = None,
    language: Annotated[str | None, typer.Option()] = None,
    severity: Annotated[str | None, typer.Option()] = None,
    tier: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Add a routing rule (fields left out match anything); prints its id alone on stdout."""
    rule_id = _admin(
        lambda s: admin.add_route(
            s,
            team=team,
            priority=priority,
            category=category,
            channel=channel,
            language=language,
            severity=severity,
            tier=tier,
        )
    )
    sys.stdout.write(f"{rule_id}\n")


@routes_app.command("remove")
def routes_remove(rule_id: Annotated[int, typer.Argument()]) -> None:
    """Remove a routing rule; complaints no rule matches go to the default team."""
    if not _admin(lambda s: admin.remove_route(s, rule_id)):
        err.print(f"[red]no routing rule {rule_id}[/]")
        raise typer.Exit(1)
    err.print(f"removed rule {rule_id}")


@staff_app.command("token")
def staff_token(
    staff_id: Annotated[str, typer.Argument(help="The staff member's id.")],
    ttl: Annotated[
        int | None,
        typer.Option(help="Validity in seconds (default and most: the configured maximum)."),
    ] = None,
) -> None:
    """Issue a bearer token for an active staff member and print it alone on stdout."""

    async def issue(settings: Settings) -> str:
        secret = auth.resolve_secret(settings)
        lifetime = ttl if ttl is not None else settings.staff_token_max_lifetime_s
        return await admin.token_for(settings, secret, staff_id, ttl_s=lifetime)

    sys.stdout.write(_admin(issue) + "\n")


@staff_app.command("revoke-tokens")
def staff_revoke_tokens(staff_id: Annotated[str, typer.Argument(help="The member's id.")]) -> None:
    """Refuse every token issued to a member until now, on every replica within seconds."""
    _admin(lambda s: admin.revoke_tokens(s, staff_id))
    err.print(f"revoked every token issued to {staff_id} until now")


@staff_app.command("remove")
def staff_remove(staff_id: Annotated[str, typer.Argument(help="The member's id.")]) -> None:
    """Deactivate a member: no new cases, unacknowledged ones reassigned, tokens refused."""
    moved = _admin(lambda s: admin.remove_staff(s, staff_id))
    err.print(f"removed {staff_id}; reassigned {len(moved)} unacknowledged case(s)")


ServiceOption = Annotated[
    str | None, typer.Option("--service", help="intake, resolution or notify (default: all).")
]


def _schemas(service: str | None) -> list[str]:
    if service is None:
        return list(system.NAMES)
    if service not in system.NAMES:
        err.print(f"[red]no service {service!r}; one of {', '.join(system.NAMES)}[/]")
        raise typer.Exit(2)
    return [service]


def _in_schemas(
    schemas: list[str], call: Callable[[asyncpg.Connection, str], Coroutine[Any, Any, T]]
) -> list[T]:
    """Run `call(conn, schema)` in each service's schema of the configured database."""

    async def main() -> list[T]:
        settings = await _settings_with_database()
        await system.migrate_all(settings)
        results = []
        for schema in schemas:
            conn = await asyncpg.connect(
                settings.require_database_url(), server_settings={"search_path": schema}
            )
            try:
                results.append(await call(conn, schema))
            finally:
                await conn.close()
        return results

    return _run(main())


def _print_rows(
    rows: list[dict[str, Any]],
    as_json: bool,
    line: Callable[[dict[str, Any]], str],
    *,
    none: str,
) -> None:
    """Each row on a line of its own (`--json`: the rows as one array); `none` on stderr when
    there are no rows, so that a listing that is empty says so and stdout stays empty."""
    if as_json:
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        return
    if not rows:
        err.print(none)
    for row in rows:
        sys.stdout.write(line(row) + "\n")


@deadletters_app.command("list")
def deadletters_list(
    service: ServiceOption = None,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    replayed: Annotated[bool, typer.Option(help="Include those already replayed.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The newest dead letters (never their contents: see `show`)."""

    async def one(conn: asyncpg.Connection, schema: str) -> list[dict[str, Any]]:
        return [
            {"service": schema, **r}
            for r in await deadletters.listing(conn, limit=limit, replayed=replayed)
        ]

    rows = [row for part in _in_schemas(_schemas(service), one) for row in part]
    rows.sort(key=lambda r: r["at"], reverse=True)
    _print_rows(
        rows[:limit],
        as_json,
        lambda r: (
            f"{r['id']}  {r['at']:%Y-%m-%d %H:%M:%S}  {r['service']:<10} "
            f"{r['topic']}[{r['partition']}]@{r['offset']}  {r['size'] or 0} B  "
            f"{r['reason_code']}: {r['reason']}" + ("  (replayed)" if r["replayed_at"] else "")
        ),
        none="no dead letters" + ("" if replayed else " (--replayed shows those replayed)"),
    )


def _find_letter(letter_id: str) -> tuple[str, dict[str, Any]]:
    async def one(conn: asyncpg.Connection, schema: str) -> dict[str, Any] | None:
        return await deadletters.fetch(conn, letter_id)

    for schema, found in zip(system.NAMES, _in_schemas(list(system.NAMES), one), strict=True):
        if found is not None:
            return schema, found
    err.print(f"[red]no dead letter {letter_id}[/]")
    raise typer.Exit(1)


@deadletters_app.command("show")
def deadletters_show(
    letter_id: Annotated[str, typer.Argument(help="The dead letter's id (see `list`).")],
    raw: Annotated[bool, typer.Option(help="Write the original value's bytes alone.")] = False,
) -> None:
    """One dead letter with the original record (as JSON, bytes in base64; or --raw)."""
    schema, letter = _find_letter(letter_id)
    value = bytes(letter["value"] or b"")
    if raw:
        sys.stdout.buffer.write(value)
        return
    doc = {
        "id": letter["id"],
        "service": schema,
        "consumer": letter["consumer"],
        "topic": letter["topic"],
        "partition": letter["partition"],
        "offset": letter["offset"],
        "reason_code": letter["reason_code"],
        "reason": letter["reason"],
        "at": letter["at"].isoformat(),
        "replayed_at": letter["replayed_at"].isoformat() if letter["replayed_at"] else None,
        "key_base64": base64.b64encode(bytes(letter["key"])).decode() if letter["key"] else None,
        "value_base64": base64.b64encode(value).decode(),
        "headers": [
            {"name": n, "value_base64": base64.b64encode(v).decode()}
            for n, v in deadletters.original_headers(letter)
        ],
    }
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


@deadletters_app.command("replay")
def deadletters_replay(
    letter_id: Annotated[str, typer.Argument(help="The dead letter's id (see `list`).")],
) -> None:
    """Produce the original record again, byte for byte, to the topic it came from (once the
    cause is fixed); the consumers' idempotence makes a second replay harmless."""
    schema, letter = _find_letter(letter_id)

    async def main() -> None:
        settings = await _settings_with_database()
        if not settings.kafka_bootstrap:
            err.print("[red]set COMPLAINTS_KAFKA_BOOTSTRAP to the broker to replay to[/]")
            raise typer.Exit(2)
        producer = kafka.build_producer(settings, client_id="complaints-replay")
        await producer.start()
        try:
            await producer.send_and_wait(
                letter["topic"],
                bytes(letter["value"] or b""),
                key=bytes(letter["key"]) if letter["key"] is not None else None,
                headers=deadletters.original_headers(letter),
            )
        finally:
            await producer.stop()
        conn = await asyncpg.connect(
            settings.require_database_url(), server_settings={"search_path": schema}
        )
        try:
            await deadletters.mark_replayed(conn, letter_id)
        finally:
            await conn.close()

    _run(main())
    err.print(f"replayed {letter_id} to {letter['topic']}")


@outbox_app.command("list")
def outbox_list(
    service: ServiceOption = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Parked outbox rows: events the broker refused for good, which the relay skips."""

    async def one(conn: asyncpg.Connection, schema: str) -> list[dict[str, Any]]:
        return [{"service": schema, **r} for r in await outbox.parked(conn)]

    rows = [row for part in _in_schemas(_schemas(service), one) for row in part]
    _print_rows(
        rows,
        as_json,
        lambda r: (
            f"{r['service']:<10} {r['id']}  {r['parked_at']:%Y-%m-%d %H:%M:%S}  "
            f"{r['topic']}  {r['type']}  {r['size']} B  {r['park_reason']}"
        ),
        none="no parked outbox rows",
    )


@outbox_app.command("release")
def outbox_release(
    row_id: Annotated[int, typer.Argument(help="The parked row's id (see `outbox list`).")],
    service: Annotated[str, typer.Option("--service", help="Whose outbox.")],
) -> None:
    """Make a parked row due again, once what refused it is fixed (a larger message limit)."""

    async def one(conn: asyncpg.Connection, schema: str) -> bool:
        return await outbox.release(conn, row_id)

    (done,) = _in_schemas(_schemas(service), one)
    if not done:
        err.print(f"[red]no parked row {row_id} in {service}'s outbox[/]")
        raise typer.Exit(1)
    err.print(f"released {service} outbox row {row_id}")


def _resolution(call: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    return _admin(call, service="resolution")


@policy_app.command("show")
def policy_show(
    as_json: Annotated[
        bool, typer.Option("--json", help="Exactly the document `policy load` accepts.")
    ] = False,
    version: Annotated[
        int | None, typer.Option("--version", help="A kept version (default: the active one).")
    ] = None,
) -> None:
    """The active policy (or a kept version): a summary, or its JSON document."""
    shown = _resolution(lambda s: resolution_admin.show_policy(s, version))
    if as_json:
        sys.stdout.write(shown.policy.to_json())
        return
    sys.stdout.write("".join(line + "\n" for line in summaries.policy_summary(shown)))


@policy_app.command("load")
def policy_load(
    file: Annotated[
        Path, typer.Argument(help="A policy JSON document (see `policy show --json`).")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and compare only; store nothing.")
    ] = False,
    by: Annotated[str | None, typer.Option("--by", help="Who loads it (default: OS user).")] = None,
) -> None:
    """Validate a policy and compare it with the active one; unless a dry run, store it as a new
    version (not active: see `policy activate`) and print its number alone on stdout."""
    loaded = _resolution(
        lambda s: resolution_admin.load_policy(s, file, dry_run=dry_run, loaded_by=by)
    )
    changes = "".join(line + "\n" for line in loaded.diff) or "no changes from the active policy\n"
    if loaded.version is None:
        sys.stdout.write(changes)
        return
    err.print(escape(changes), end="")
    err.print(f"stored as version {loaded.version} (not active)")
    sys.stdout.write(f"{loaded.version}\n")


@policy_app.command("activate")
def policy_activate(
    version: Annotated[int, typer.Argument(help="The version to make active.")],
) -> None:
    """Make a kept version the active policy; every replica follows within seconds."""
    _resolution(lambda s: resolution_admin.activate_policy(s, version))
    err.print(f"policy version {version} is active")


@audit_app.command("verify")
def audit_verify(
    complaint: Annotated[str | None, typer.Option("--complaint", help="One case only.")] = None,
) -> None:
    """Recompute the decision log's hash chains, compare them with the published events, and
    name each case's first broken entry (exit 1 when any is broken)."""
    report = _resolution(lambda s: resolution_admin.verify_audit(s, complaint_id=complaint))
    sys.stdout.write("".join(line + "\n" for line in summaries.audit_lines(report)))
    broken = [case for case in report.cases if case.broken is not None]
    err.print(
        f"{len(report.cases)} case(s) checked against {report.heads} published head(s); "
        f"{len(broken)} broken"
    )
    if broken:
        first = broken[0]
        assert first.broken is not None
        err.print(
            f"[red]{escape(first.complaint_id)}: first broken entry is event "
            f"{first.broken.event_id}: {escape(first.broken.reason)}[/]"
        )
        raise typer.Exit(1)


@exceptions_app.command("list")
def exceptions_list(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    since: Annotated[
        datetime | None, typer.Option(help="Only those granted at or after this time (UTC).")
    ] = None,
) -> None:
    """Remedies granted as policy exceptions, newest first."""
    when = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    rows = _resolution(lambda s: resolution_admin.list_exceptions(s, since=when))
    _print_rows(rows, as_json, summaries.exception_line, none="no policy exceptions")


def main() -> None:
    app()
