"""The `mock-server` command: the bundled stand-in for the Pizzagpt and OpenAI APIs (batchpizza.mock)
run as a server of its own, its fault options one for one with `MockConfig`. cli.py registers it
on the command group; aiohttp.web is imported only when the command runs.
"""

from __future__ import annotations

from typing import Any

import click

from batchpizza.commands.numbers import PlainFloat, PlainInt


@click.command("mock-server")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep it local)."
)
@click.option(
    "--port",
    type=PlainInt(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--latency", type=PlainFloat(min=0), default=0.0, help="Added latency per request, ms."
)
@click.option("--jitter", type=PlainFloat(min=0), default=0.0, help="+- jitter on latency, ms.")
@click.option("--error-rate", type=PlainFloat(0, 1), default=0.0, help="Fraction of 5xx replies.")
@click.option(
    "--rate-limit",
    type=PlainFloat(min=0),
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
    type=PlainFloat(0, 1),
    default=0.0,
    help="Fraction of replies that are the misuse refusal.",
)
@click.option(
    "--garbage-rate",
    type=PlainFloat(0, 1),
    default=0.0,
    help="Fraction of 200 replies whose body is truncated JSON.",
)
@click.option(
    "--drop-rate",
    type=PlainFloat(0, 1),
    default=0.0,
    help="Fraction of requests whose connection is closed without a reply.",
)
@click.option(
    "--hang-rate",
    type=PlainFloat(0, 1),
    default=0.0,
    help="Fraction of requests never answered (until the client gives up).",
)
@click.option(
    "--empty-rate",
    type=PlainFloat(0, 1),
    default=0.0,
    help="Fraction of 200 replies with an empty answer (null content on the OpenAI route).",
)
@click.option(
    "--seed",
    type=PlainInt(),
    default=None,
    help="Seed for the random faults, to replay a run exactly.",
)
@click.option(
    "--misuse-after",
    type=PlainInt(min=0),
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
    "--by-request",
    is_flag=True,
    help="OpenAI route: answers depend on the model and the temperature too, not only the prompt.",
)
@click.option(
    "--structured-valid",
    type=PlainFloat(0, 1),
    default=0.70,
    show_default=True,
    help="Schema-bound requests: the share answered with valid JSON; the rest half wrapped in a "
    "fence or prose, half not fitting.",
)
@click.option(
    "--models",
    default=None,
    help="OpenAI route: the models served, comma-separated; others get 404 model_not_found "
    "[default: any model].",
)
@click.option(
    "--batch-seconds",
    type=PlainFloat(min=0),
    default=1.0,
    show_default=True,
    help="Batch API: how long a batch takes from creation to completed.",
)
@click.option(
    "--batch-expire",
    type=PlainInt(min=0),
    default=0,
    help="Batch API: the first N batches expire with half their lines done.",
)
@click.option(
    "--batch-fail-every",
    type=PlainInt(min=0),
    default=0,
    help="Batch API: every Nth line of a first submission fails (a 500 in the error file).",
)
@click.option(
    "--tpm-limit",
    type=PlainFloat(min=0),
    default=0.0,
    help="OpenAI route: tokens per --token-window above which it answers 429, with "
    "x-ratelimit-*-tokens headers; 0 = no limit.",
)
@click.option(
    "--token-window",
    type=PlainFloat(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="OpenAI route: the token limit's window in seconds (a minute, as OpenAI's).",
)
@click.option(
    "--quota-tokens",
    type=PlainInt(min=0),
    default=None,
    help="OpenAI route: after this many tokens, every request gets 429 insufficient_quota.",
)
@click.option(
    "--price",
    "price",
    default="1,2",
    show_default=True,
    metavar="IN,OUT",
    help="OpenAI route: dollars per million input and output tokens, for the cost in __stats.",
)
def mock_server(
    host: str,
    port: int,
    latency: float,
    jitter: float,
    models: str | None,
    batch_seconds: float,
    batch_expire: int,
    batch_fail_every: int,
    price: str,
    **options: Any,
) -> None:
    """A local stand-in for the Pizzagpt API and an OpenAI-compatible server, for offline runs
    and tests. The first line on stdout says where it listens (BASE); the routes are:

    \b
      POST BASE/api/chatx-completion   Pizzagpt (--base-url BASE)
      POST BASE/v1/chat/completions    OpenAI chat completions (--base-url BASE/v1)
      GET  BASE/v1/models              the models served
      BASE/v1/files, BASE/v1/batches   the Batch API (run --via batch)
      GET  BASE/__stats                counters as JSON; POST BASE/__reset clears them

    \b
    Directives in a prompt script its reply, e.g. [[status:503]], [[fail-first:2]],
    [[slow:200]], [[misuse]] (see batchpizza/mock/faults.py).
    """
    # Imported here: aiohttp.web is only needed for this command.
    from batchpizza.mock.batches import BatchMock
    from batchpizza.mock.faults import MockConfig
    from batchpizza.mock.server import serve

    served = tuple(name.strip() for name in (models or "").split(",") if name.strip())
    if models is not None and not served:
        raise click.BadParameter("give model names separated by commas", param_hint="--models")
    from batchpizza.pricing import parse_price

    try:
        price_in, price_out = parse_price(price)
    except Exception as exc:  # a UsageError: said as click says a bad value
        raise click.BadParameter(str(exc), param_hint="--price") from None
    config = MockConfig(
        latency_ms=latency,
        jitter_ms=jitter,
        models=served,
        price_in=price_in,
        price_out=price_out,
        **options,
    )
    batches = BatchMock(seconds=batch_seconds, expire=batch_expire, fail_every=batch_fail_every)
    serve(config, host=host, port=port, batches=batches)
