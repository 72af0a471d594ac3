"""The command line: options -> a RunConfig -> a Job -> an exit code. Nothing else lives here."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from batchpizza import config as defaults
from batchpizza.checkpoint import Checkpoint, is_locked
from batchpizza.config import RunConfig
from batchpizza.errors import BatchpizzaError
from batchpizza.files import write_atomically
from batchpizza.job.stages import Job, run_loop
from batchpizza.records import Summary


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchpizza")
def cli() -> None:
    """Send a prompt set to the Pizzagpt API, politely and crash-safely."""


@cli.command()
@click.argument("input", metavar="INPUT")
@click.option("-o", "--output", required=True, help="Output file: .parquet or .jsonl.")
@click.option(
    "--prompt-field", help=f"Field holding the prompt [default: {defaults.DEFAULT_PROMPT_FIELD}]."
)
@click.option(
    "--messages-field",
    help=f"Field holding a chat message list [default: {defaults.DEFAULT_MESSAGES_FIELD}].",
)
@click.option(
    "--id-field", help=f"Field holding the row id [default: {defaults.DEFAULT_ID_FIELD}]."
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=defaults.DEFAULT_CONCURRENCY,
    show_default=True,
    help="Requests in flight at most.",
)
@click.option(
    "--rate",
    default=defaults.DEFAULT_RATE,
    show_default=True,
    help="Requests per second, evenly spaced: 5, 5/s, 300/min, 1000/h; 0 = unlimited.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=defaults.DEFAULT_MAX_RETRIES,
    show_default=True,
    help="Retries after the first attempt.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=defaults.DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds per attempt.",
)
@click.option(
    "--proxy", envvar="BATCHPIZZA_PROXY", help="HTTP(S) proxy URL [env: BATCHPIZZA_PROXY]."
)
@click.option(
    "--base-url",
    envvar="BATCHPIZZA_BASE_URL",
    default=defaults.DEFAULT_BASE_URL,
    show_default=True,
    help="API server [env: BATCHPIZZA_BASE_URL].",
)
@click.option(
    "--checkpoint", help="Checkpoint file (a folder with --ray) [default: OUTPUT.checkpoint]."
)
@click.option(
    "--provider",
    type=click.Choice(defaults.PROVIDERS),
    default="pizzagpt",
    show_default=True,
    help="The API: Pizzagpt, or any OpenAI-compatible chat completions server.",
)
@click.option("--model", help="Model name (openai provider) [default: the server's / the line's].")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Body parameter for the openai provider, VALUE read as JSON where it parses; repeatable.",
)
@click.option(
    "--api-key-env",
    default=defaults.DEFAULT_API_KEY_ENV,
    show_default=True,
    help="Environment variable holding the API key (openai provider).",
)
@click.option(
    "--format",
    type=click.Choice(defaults.FORMATS),
    help="Output format [default: from the extension]; openai-batch writes OpenAI Batch lines.",
)
@click.option("--restart", is_flag=True, help="Forget the checkpoint's answers and start over.")
@click.option(
    "--retry-refused",
    is_flag=True,
    help="Send again the rows an earlier run recorded as misuse (kept as misuse otherwise).",
)
@click.option("--skip-bad-rows", is_flag=True, help="Run the good rows; mark bad ones invalid.")
@click.option(
    "--deadline",
    help="Stop starting requests this long after the process started (90, 90s, 50m, 2h); "
    "the output is written with pending rows, exit 4.",
)
@click.option(
    "--patience",
    default=defaults.DEFAULT_PATIENCE,
    show_default=True,
    help="How long to wait on a service that keeps refusing before stopping (0: stop at once).",
)
@click.option("--dry-run", is_flag=True, help="Validate and plan; send and change nothing.")
@click.option("--limit", type=click.IntRange(min=0), help="Use only the first N rows.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar [default: when stderr is a terminal; else a line every minute].",
)
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0, min_open=True),
    default=defaults.DEFAULT_PROGRESS_EVERY,
    show_default=True,
    help="Seconds between progress lines when stderr is not a terminal.",
)
@click.option(
    "--summary-json", type=click.Path(dir_okay=False), help="Also write the summary as JSON here."
)
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log every retry, with a timestamp.")
@click.option(
    "--mock",
    is_flag=True,
    help="Answer from the bundled mock API in-process (offline demo; own checkpoint).",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="auto",
    default=None,
    metavar="[ADDRESS]",
    help="Run on a Ray cluster at ADDRESS (auto: RAY_ADDRESS, else a local one); INPUT and "
    "OUTPUT may be folders of Parquet parts. Needs batchpizza[ray].",
)
def run(**options: Any) -> None:
    """Send every prompt of INPUT (.jsonl, .ndjson, .gz, .parquet, a folder, or - for stdin).

    \b
    Examples:
      batchpizza run samples/prompts.jsonl -o out.parquet --mock
      batchpizza run prompts.jsonl -o out.parquet --rate auto --deadline 50m

    \b
    Exit codes:
      0   every row answered
      3   finished, but some rows failed, were refused or were invalid
      4   stopped early (deadline, or the service kept refusing): rerun to continue
      75  another run holds this output: nothing done, try again later
      2   usage or input error: nothing sent
      130/143  interrupted: the checkpoint is saved
      1   internal or I/O error; the checkpoint is still consistent
    """
    input_path = options.pop("input")
    output = options.pop("output")
    address = options.pop("ray_address")
    if address is not None:
        sys.exit(_run_on_ray(input_path, output, address, options))
    try:
        config = RunConfig.from_options(input_path, output, **options)
    except BatchpizzaError as exc:
        raise click.UsageError(exc.message) from None
    sys.exit(_run_job(Job(config)))


def _run_on_ray(input_path: str, output: str, address: str, options: dict[str, Any]) -> int:
    # Ray itself is imported by the command only once it needs the cluster.
    from batchpizza.distributed.command import run as run_on_ray

    try:
        summary = run_on_ray(input_path, output, address=address, **options)
    except BatchpizzaError as exc:
        with contextlib.suppress(OSError, ValueError):  # a closed stderr: the exit code says it
            click.echo(f"batchpizza: {exc.message}", err=True)
        return exc.exit_code
    return summary.exit_code


def _run_job(job: Job) -> int:
    async def main() -> Summary:
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if job.stop.signum is not None:
                if signum == signal.SIGINT:  # a second Ctrl-C: the user wants out now
                    print("batchpizza: interrupted again; exiting now", file=sys.stderr, flush=True)
                    os._exit(130)
                return
            if not job.config.quiet:
                name = signal.Signals(signum).name
                print(
                    f"\nbatchpizza: {name}: finishing requests in flight, then saving...",
                    file=sys.stderr,
                    flush=True,
                )
            job.interrupt(signum)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        return await job.run()

    try:
        summary = run_loop(main())
    except BatchpizzaError as exc:
        with contextlib.suppress(OSError, ValueError):  # a closed stderr: the exit code says it
            click.echo(f"batchpizza: {exc.message}", err=True)
        return exc.exit_code
    return int(summary["exit_code"])


@cli.command()
@click.argument("output", required=False)
@click.option("--checkpoint", help="The checkpoint file [default: OUTPUT.checkpoint].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(output: str | None, checkpoint: str | None, as_json: bool) -> None:
    """What the checkpoint of OUTPUT holds, and whether a run is using it now."""
    path = _checkpoint_path(output, checkpoint)
    try:
        store = Checkpoint.open(path, create=False, readonly=True)
        try:
            info = store.status()
        finally:
            store.close()
    except BatchpizzaError as exc:
        click.echo(f"batchpizza: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    info["checkpoint"] = str(path)
    info["running"] = is_locked(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    updated = info.get("updated")
    when = (
        dt.datetime.fromtimestamp(float(updated)).isoformat(timespec="seconds")  # type: ignore[arg-type]
        if updated
        else "never"
    )
    click.echo(f"checkpoint {path}")
    click.echo(f"  input      {info.get('input') or 'unknown'} ({info.get('rows', '?')} rows)")
    for key in ("answered", "failed", "misuse", "invalid", "pending"):
        click.echo(f"  {key:<10} {info.get(key, '?')}")
    click.echo(f"  kept       {info.get('answers_kept', '?')} answers in all")
    click.echo(f"  written    {when}")
    click.echo(f"  running    {'yes: a run holds the lock' if info['running'] else 'no'}")


def _checkpoint_path(output: str | None, checkpoint: str | None) -> Path:
    if not output and not checkpoint:
        raise click.UsageError("give OUTPUT or --checkpoint")
    path = Path(checkpoint) if checkpoint else Path(f"{output}.checkpoint")
    if not checkpoint and not path.exists() and Path(f"{output}.mock-checkpoint").exists():
        path = Path(f"{output}.mock-checkpoint")  # the output of an offline --mock run
    return path


@cli.command()
@click.argument("output", required=False)
@click.option("--checkpoint", help="The checkpoint file [default: OUTPUT.checkpoint].")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
@click.option(
    "--html",
    type=click.Path(dir_okay=False),
    help="Also write one self-contained page with charts (opens offline).",
)
def report(output: str | None, checkpoint: str | None, as_json: bool, html: str | None) -> None:
    """What the runs on OUTPUT did: rows, requests, retries, latency, errors, rate, breaker."""
    from batchpizza.reporting import build_report

    path = _checkpoint_path(output, checkpoint)
    try:
        text, numbers, page = build_report(path, html=html is not None)
        if html is not None and page is not None:
            write_atomically(Path(html), page.encode("utf-8"))
    except BatchpizzaError as exc:
        click.echo(f"batchpizza: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    click.echo(json.dumps(numbers, indent=2) if as_json else text)


@cli.command("mock-server")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep it local)."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--latency", type=click.FloatRange(min=0), default=0.0, help="Added latency per request, ms."
)
@click.option(
    "--jitter", type=click.FloatRange(min=0), default=0.0, help="+- jitter on latency, ms."
)
@click.option(
    "--error-rate", type=click.FloatRange(0, 1), default=0.0, help="Fraction of 5xx replies."
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Requests/s above which it answers 429 with Retry-After (and, on the OpenAI route, "
    "retry-after-ms and x-ratelimit-* headers); 0 = no limit.",
)
@click.option(
    "--retry-after",
    default="1",
    show_default=True,
    help="Retry-After sent with rate-limit 429s: seconds or an HTTP date.",
)
@click.option(
    "--misuse-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of replies that are the misuse refusal.",
)
@click.option(
    "--garbage-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of 200 replies whose body is truncated JSON.",
)
@click.option(
    "--drop-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of requests whose connection is closed without a reply.",
)
@click.option(
    "--hang-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of requests never answered (until the client gives up).",
)
@click.option(
    "--empty-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of 200 replies with an empty answer (null content on the OpenAI route).",
)
@click.option(
    "--seed", type=int, default=None, help="Seed for the random faults, to replay a run exactly."
)
@click.option(
    "--misuse-after",
    type=click.IntRange(min=0),
    default=None,
    help="Pizzagpt route: refuse every request after this many as misuse (a service that "
    "turns to refusing).",
)
@click.option(
    "--api-key",
    default=None,
    help="OpenAI route: require 'Authorization: Bearer KEY' (401 otherwise).",
)
@click.option(
    "--models",
    default=None,
    help="OpenAI route: the models served, comma-separated; others get 404 model_not_found "
    "[default: any model].",
)
def mock_server(
    host: str, port: int, latency: float, jitter: float, models: str | None, **options: Any
) -> None:
    """A local stand-in for the Pizzagpt API and an OpenAI-compatible server, for offline runs
    and tests. The first line on stdout says where it listens (BASE); the routes are:

    \b
      POST BASE/api/chatx-completion   Pizzagpt (--base-url BASE)
      POST BASE/v1/chat/completions    OpenAI chat completions (--base-url BASE/v1)
      GET  BASE/v1/models              the models served
      GET  BASE/__stats                counters as JSON; POST BASE/__reset clears them

    \b
    Directives in a prompt script its reply, e.g. [[status:503]], [[fail-first:2]],
    [[slow:200]], [[misuse]] (see batchpizza/mock_server.py).
    """
    from batchpizza.mock.server import MockConfig, serve  # aiohttp.web: only for this command

    served = tuple(name.strip() for name in (models or "").split(",") if name.strip())
    if models is not None and not served:
        raise click.BadParameter("give model names separated by commas", param_hint="--models")
    config = MockConfig(latency_ms=latency, jitter_ms=jitter, models=served, **options)
    serve(config, host=host, port=port)


def main() -> None:
    cli(prog_name="batchpizza")
