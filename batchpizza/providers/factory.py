"""The one place a provider is built from the run's options, with its proxy resolved once."""

from __future__ import annotations

import os

from batchpizza.config import RunConfig
from batchpizza.errors import UsageError
from batchpizza.parsing import check_url
from batchpizza.providers import Provider
from batchpizza.records import TOKEN_COLUMNS
from batchpizza.redact import remember_secret, remember_url

# The proxy settings a run honours, in the order they win; each is remembered as a secret (a
# proxy URL may carry a password).
PROXY_VARIABLES = (
    "BATCHPIZZA_PROXY",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def remember_secrets(config: RunConfig) -> None:
    """Teach the redactor every URL of the run that may carry credentials, before any is used."""
    for url in (config.proxy, config.base_url, *map(os.environ.get, PROXY_VARIABLES)):
        remember_url(url)


def extra_columns(provider: str) -> tuple[str, ...]:
    """The result columns after the common ones: the token counts, of every provider (Pizzagpt's
    estimated), as each provider's `extra_columns` says for a Ray part."""
    return TOKEN_COLUMNS


def make_provider(config: RunConfig) -> Provider:
    """The provider `config` names, its proxy taken from the options or the environment."""
    from yarl import URL

    from batchpizza.providers.http import env_proxy

    if not config.proxy:
        # The standard variables are the user's options too: a broken one is a usage error
        # now, not a failure of every row with the password in the error column.
        scheme = URL(config.base_url).scheme
        for name in (f"{scheme.upper()}_PROXY", f"{scheme}_proxy"):
            if os.environ.get(name):
                remember_url(os.environ[name])
                check_url(os.environ[name], name)
    try:
        proxy = config.proxy or env_proxy(URL(config.base_url))
    except ValueError as exc:
        raise UsageError(f"the proxy from the environment is not usable: {exc}") from None
    if config.provider == "openai":
        from batchpizza.providers.openai import OpenAIAPI

        key = os.environ.get(config.api_key_env) or None
        remember_secret(key)
        return OpenAIAPI(
            config.base_url,
            model=config.model,
            params=config.params,
            api_key=key,
            timeout=config.timeout,
            proxy=proxy,
            # The reply bodies, verbatim in openai-batch lines: kept only for that output, as
            # they more than double the checkpoint (README, "OpenAI batch files").
            keep_bodies=config.output_format == "openai-batch",
            structured=config.structured,
        )
    from batchpizza.providers.pizzagpt import PizzagptAPI

    return PizzagptAPI(
        config.base_url, timeout=config.timeout, proxy=proxy, structured=config.structured
    )
