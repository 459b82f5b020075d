"""`complaints`: run the system, one service, migrations, channel keys and staff tokens."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from complaints import system
from shared import auth, devinfra
from shared.events import Channel
from shared.settings import Settings

app = typer.Typer(
    help="Event-driven complaint resolution.", no_args_is_help=True, add_completion=False
)
keys_app = typer.Typer(help="Channel keys: create, list, revoke.", no_args_is_help=True)
staff_app = typer.Typer(help="Staff: bearer tokens.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(staff_app, name="staff")

err = Console(stderr=True)
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


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
    try:
        settings = infra.settings
        await system.migrate_all(settings)
        secret = auth.resolve_secret(settings)
        keys = await _dev_keys(settings)
        token = auth.issue_token(secret, kind=auth.STAFF, subject="demo-manager", ttl_s=86_400)
        base = settings.base_url()

        out = Console(soft_wrap=True)

        def ready() -> None:
            out.print("[bold green]complaints is up[/]  (Ctrl-C stops everything)")
            out.print(f"  API        {base}  (OpenAPI: {base}/openapi.json, docs: {base}/docs)")
            out.print(f"  stream     {base}/v1/stream  (staff token below)")
            out.print(f"  health     {base}/healthz  {base}/readyz")
            for note in infra.notes:
                out.print(f"  {note}")
            for channel, key in keys.items():
                out.print(f"  key {channel:<6} {key}")
            out.print(f"  staff token (demo-manager): {token}")
            if demo:
                out.print("[bold]demo traffic[/]: web complaints over HTTP, phone over Kafka")
                tasks.append(
                    asyncio.create_task(demo_traffic.traffic(settings, keys=keys, say=out.print))
                )
                tasks.append(
                    asyncio.create_task(demo_traffic.follow(settings, token=token, say=out.print))
                )

        async def stopping() -> None:
            if tasks:
                out.print("stopping…")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks.clear()

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
    from services.intake import keys as channel_keys

    result = {}
    for channel in ("web", "phone"):
        key = known.get(channel)
        if key is None or await channel_keys.channel_of(settings, key) != channel:
            key = await channel_keys.create(settings, channel)
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
        db = await devinfra.resolve_database(Settings().database_url)
        applied = await system.migrate_all(Settings(database_url=db.url))
        for name, versions in applied.items():
            err.print(f"{name}: {', '.join(versions) if versions else 'up to date'}")

    _run(main())


async def _settings_with_database() -> Settings:
    settings = Settings()
    db = await devinfra.resolve_database(settings.database_url)
    settings = settings.model_copy(update={"database_url": db.url})
    await system.migrate_all(settings, ["intake"])
    return settings


@keys_app.command("create")
def keys_create(
    channel: Annotated[Channel, typer.Option(help="The channel the key is for.")],
) -> None:
    """Create a channel key and print it alone on stdout."""
    from services.intake import keys as channel_keys

    async def main() -> str:
        return await channel_keys.create(await _settings_with_database(), channel.value)

    sys.stdout.write(_run(main()) + "\n")


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List channel keys (ids and channels; the keys themselves are never stored)."""
    from services.intake import keys as channel_keys

    async def main() -> list[dict[str, Any]]:
        return await channel_keys.list_all(await _settings_with_database())

    rows = _run(main())
    if as_json:
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        return
    for row in rows:
        state = f"revoked {row['revoked_at']:%Y-%m-%d}" if row["revoked_at"] else "live"
        sys.stdout.write(
            f"{row['key_id']}  {row['channel']:<6} {row['created_at']:%Y-%m-%d %H:%M}  {state}\n"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `keys list`).")],
) -> None:
    """Revoke a channel key; its holder gets 401 from then on."""
    from services.intake import keys as channel_keys

    async def main() -> bool:
        return await channel_keys.revoke(await _settings_with_database(), key_id)

    if not _run(main()):
        err.print(f"[red]no live key with id {key_id}[/]")
        raise typer.Exit(1)
    err.print(f"revoked {key_id}")


@staff_app.command("token")
def staff_token(
    staff_id: Annotated[str, typer.Argument(help="The staff member's id.")],
    ttl: Annotated[int, typer.Option(help="Validity in seconds.")] = 12 * 3600,
) -> None:
    """Issue a bearer token for a staff member and print it alone on stdout."""
    secret = auth.resolve_secret(Settings())
    sys.stdout.write(auth.issue_token(secret, kind=auth.STAFF, subject=staff_id, ttl_s=ttl) + "\n")


def main() -> None:
    app()
