"""The command line: options -> a RunConfig -> a Job -> an exit code. Nothing else lives here."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import click

import batchpizza.config as defaults
from batchpizza.commands import say
from batchpizza.commands.mock_server import mock_server
from batchpizza.commands.numbers import PlainFloat, PlainInt
from batchpizza.commands.status import report, status
from batchpizza.config import RunConfig
from batchpizza.errors import BatchpizzaError

if TYPE_CHECKING:
    from batchpizza.job import Job
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
@click.option("--system", metavar="TEXT", help="A system message first in every request.")
@click.option(
    "--template",
    metavar="TEXT",
    help="Build each prompt from the row's fields: 'Summarise: {title}\\n\\n{body}' "
    "({{ and }} for braces; \\n a newline, \\t a tab). Rows then need no prompt field.",
)
@click.option(
    "--template-file",
    type=click.Path(dir_okay=False),
    help="Build each prompt with this Jinja2 template file ({{ title }}); needs "
    "batchpizza[templates].",
)
@click.option(
    "--schema",
    type=click.Path(dir_okay=False),
    help="A JSON Schema file every answer must fit: sent as response_format (--provider openai) "
    "or asked for in the prompt; answers validated, typed in a `parsed` column.",
)
@click.option(
    "--schema-retries",
    type=PlainInt(min=0),
    default=2,
    show_default=True,
    metavar="N",
    help="Re-asks of an answer that does not fit --schema, the error put back to the model.",
)
@click.option("--flatten", is_flag=True, help="With --schema: its top-level properties as columns.")
@click.option(
    "--concurrency",
    type=PlainInt(min=1),
    default=defaults.DEFAULT_CONCURRENCY,
    show_default=True,
    help="Requests in flight at most.",
)
@click.option(
    "--rate",
    help="Requests per second, evenly spaced: 5, 5/s, 300/min, 1000/h; 0 = unlimited; auto or "
    "auto:MAX (e.g. auto:20/s) = learned from the service, up to MAX "
    f"[default: {defaults.DEFAULT_RATE}; {defaults.DEFAULT_MOCK_RATE} with --mock].",
)
@click.option(
    "--tpm",
    help="Tokens per minute (input + output), beside --rate: 20000, 20k; auto = kept below the "
    "server's x-ratelimit-*-tokens headers.",
)
@click.option(
    "--max-cost",
    type=PlainFloat(min=0),
    help="US dollars this checkpoint may spend, over all its runs: each request reserves its "
    "worst case first; at the cap, exit 4 with the rest pending.",
)
@click.option(
    "--price",
    metavar="IN,OUT",
    help="Dollars per million input and output tokens [default: the shipped table's price of "
    "the model].",
)
@click.option(
    "--max-retries",
    type=PlainInt(min=0),
    default=defaults.DEFAULT_MAX_RETRIES,
    show_default=True,
    help="Retries after the first attempt.",
)
@click.option(
    "--timeout",
    type=PlainFloat(min=0, min_open=True),
    default=defaults.DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds per attempt.",
)
@click.option("--proxy", help="HTTP(S) proxy URL.")
@click.option(
    "--base-url", default=defaults.DEFAULT_BASE_URL, show_default=True, help="API server."
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
@click.option(
    "--via",
    type=click.Choice(("online", "batch", "auto")),
    default="online",
    show_default=True,
    help="batch: through the provider's Batch API, at half price, within 24 h (--provider "
    "openai); a run collects what is done and exits 4 while batches are out. auto: the same, "
    "and rows still out near --deadline are sent online.",
)
@click.option("--wait", is_flag=True, help="--via batch: wait for the batches (up to --deadline).")
@click.option("--dry-run", is_flag=True, help="Validate and plan; send and change nothing.")
@click.option("--limit", type=PlainInt(min=0), help="Use only the first N rows.")
@click.option(
    "--repeat",
    "samples",
    type=PlainInt(min=1),
    default=1,
    show_default=True,
    help="Ask each request N times: N answers and N output rows, with a `sample` column "
    "(0..N-1) when N > 1.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar [default: when stderr is a terminal; else a line every minute].",
)
@click.option(
    "--progress-every",
    type=PlainFloat(min=0, min_open=True),
    default=defaults.DEFAULT_PROGRESS_EVERY,
    show_default=True,
    help="Seconds between progress lines when stderr is not a terminal.",
)
@click.option(
    "--summary-json", type=click.Path(dir_okay=False), help="Also write the summary as JSON here."
)
@click.option(
    "--log-format",
    type=click.Choice(defaults.LOG_FORMATS),
    default="text",
    show_default=True,
    help="Log lines on stderr (start, progress, summary): timestamped text, or one JSON object "
    "a line for a log collector.",
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
    """Send every prompt of INPUT (.jsonl, .ndjson, .csv, .tsv, .gz, .parquet, a folder, or -
    for stdin).

    Every option can also be set by an environment variable: BATCHPIZZA_ and the option's long
    name in capitals, dashes as underscores (--rate: BATCHPIZZA_RATE); the command line wins.

    \b
    Examples:
      batchpizza run samples/prompts.jsonl -o out.parquet --mock
      batchpizza run prompts.jsonl -o out.parquet --rate auto --deadline 50m

    \b
    Exit codes:
      0   every row answered
      3   finished, but some rows failed, were refused or were invalid
      4   stopped early (deadline, refusals, --max-cost, quota, batches still out):
          rerun to continue
      75  another run holds this output: nothing done, try again later
      2   usage or input error: nothing sent
      130/143/129  interrupted (SIGINT/SIGTERM/SIGHUP): the checkpoint is saved
      1   internal or I/O error; the checkpoint is still consistent
    """
    input_path = options.pop("input")
    output = options.pop("output")
    address = options.pop("ray_address")
    if options.get("template") is not None:
        from batchpizza.prompts import unescape

        options["template"] = unescape(options["template"])
    if address is not None:
        sys.exit(_run_on_ray(input_path, output, address, options))
    try:
        config = RunConfig.from_options(input_path, output, **options)
    except BatchpizzaError as exc:
        raise click.UsageError(exc.message) from None
    # The engine (aiohttp, the providers, the checkpoint) is imported once a run is asked for:
    # --help, --version, status and report start without it.
    from batchpizza.job import Job
    from batchpizza.lean import lean_command_line

    lean_command_line()

    sys.exit(_run_job(Job(config)))


def _environment_variables(command: click.Command) -> None:
    """Every option of `command` read from BATCHPIZZA_<LONG NAME> when not on the command line
    (--rate: BATCHPIZZA_RATE), shown in --help; the same rule as the variables that came first
    (BATCHPIZZA_BASE_URL, BATCHPIZZA_PROXY)."""
    for param in command.params:
        if not isinstance(param, click.Option) or param.envvar is not None:
            continue
        long = next(o for o in param.opts if o.startswith("--"))
        param.envvar = "BATCHPIZZA_" + long[2:].upper().replace("-", "_")
        param.show_envvar = True


_environment_variables(run)


def _run_on_ray(input_path: str, output: str, address: str, options: dict[str, Any]) -> int:
    # Ray itself is imported by the command only once it needs the cluster.
    from batchpizza.distributed.command import run as run_on_ray

    try:
        summary = run_on_ray(input_path, output, address=address, **options)
    except BatchpizzaError as exc:
        with contextlib.suppress(OSError, ValueError):  # a closed stderr: the exit code says it
            say(exc)
        return exc.exit_code
    return summary.exit_code


def _run_job(job: Job) -> int:
    import asyncio

    from batchpizza.job import run_loop
    from batchpizza.job.ctrlc import first_stop, stop_signals

    async def main() -> Summary:
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if job.stop.signum is not None:
                if signum == signal.SIGINT:  # a second Ctrl-C: the user wants out now
                    with contextlib.suppress(OSError, ValueError):  # out even if stderr is not
                        print(
                            "batchpizza: interrupted again; exiting now",
                            file=sys.stderr,
                            flush=True,
                        )
                    os._exit(130)
                return
            first_stop(job, signum, signal.Signals(signum).name)

        for signum in stop_signals():
            loop.add_signal_handler(signum, on_signal, signum)
        return await job.run()

    try:
        summary = run_loop(main())
    except BatchpizzaError as exc:
        with contextlib.suppress(OSError, ValueError):  # a closed stderr: the exit code says it
            say(exc)
        return exc.exit_code
    return int(summary["exit_code"])


cli.add_command(status)
cli.add_command(report)
cli.add_command(mock_server)


def main() -> None:
    cli(prog_name="batchpizza")
