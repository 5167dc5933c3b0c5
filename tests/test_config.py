"""load_settings and init_app (flask_llm_proxy/config.py, extension.py).

A wrong setting fails at startup with a ``ConfigError`` naming the key, never at the first request;
a misspelt key is a warning naming the key that was probably meant.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from flask import Flask

from flask_llm_proxy import LLMProxy
from flask_llm_proxy.access.cors import cors_origin_matchers
from flask_llm_proxy.accounting.ledger import open_store
from flask_llm_proxy.accounting.pricing import PriceTable
from flask_llm_proxy.accounting.sqlite_store import SQLiteStore
from flask_llm_proxy.accounting.store import NullStore
from flask_llm_proxy.config import DEFAULTS, Settings, load_settings
from flask_llm_proxy.errors import ConfigError

ANTHROPIC = {"api_key": "sk-ant-test", "models": ["claude-*"]}
OPENAI = {"api_key": "sk-openai-test", "models": ["gpt-*"]}
SECRET = "Zq8vK2pXw7Rt"  # the part of a key no error message may show, not even in part


def assert_no_part_of(secret: str, text: str) -> None:
    """Not the secret, and not any 4 characters of it in a row."""
    leaks = {secret[i : i + 4] for i in range(len(secret) - 3)} & {text[i : i + 4] for i in range(len(text) - 3)}
    assert not leaks, f"{leaks} of the secret in {text!r}"


def load(environ: dict[str, str] | None = None, **config: Any) -> Settings:
    return load_settings(config, environ=environ or {})


def providers(**entries: Any) -> Settings:
    return load(LLM_PROXY_PROVIDERS=entries)


def config_error(key: str, *fragments: str, environ: dict[str, str] | None = None, **config: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(environ, **config)
    err = info.value
    assert err.key == key
    assert str(err).startswith(f"{key}: ")
    for fragment in fragments:
        assert fragment in str(err), f"{fragment!r} not in {str(err)!r}"
    return err


def provider_error(key_suffix: str, name: str, entry: Any, *fragments: str, environ: dict[str, str] | None = None) -> ConfigError:
    return config_error(f"LLM_PROXY_PROVIDERS[{name!r}]{key_suffix}", *fragments, environ=environ, LLM_PROXY_PROVIDERS={name: entry})


# --- defaults ---------------------------------------------------------------------------------


def test_an_empty_config_gives_the_documented_defaults():
    s = load()
    assert s.providers == {}
    assert s.url_prefix == "/api"
    assert s.default_max_tokens == DEFAULTS["LLM_PROXY_DEFAULT_MAX_TOKENS"]
    assert s.max_retries == 2 and s.retry_backoff == 1.0 and s.retry_after_max == 20.0
    assert s.require_auth is True and s.rate_limit == "60/minute" and s.token_quota is None
    assert s.cors_origins == () and s.cors_credentials is False
    assert s.keepalive == 15.0


def test_load_settings_does_not_modify_the_config():
    cfg = {"LLM_PROXY_PROVIDERS": {"anthropic": dict(ANTHROPIC)}, "LLM_PROXY_CORS_ORIGINS": "https://a.test, https://b.test"}
    before = repr(cfg)
    s = load_settings(cfg, environ={})
    assert repr(cfg) == before
    assert s.cors_origins == ("https://a.test", "https://b.test")


# --- providers --------------------------------------------------------------------------------


def test_a_bad_provider_type_names_the_type_key():
    provider_error(".type", "claude", dict(ANTHROPIC, type="azure"), "'azure'", "anthropic", "openai", "mock")


def test_type_defaults_to_the_entry_name():
    s = providers(anthropic=ANTHROPIC, openai=OPENAI, mock={"models": ["*"]})
    assert {n: p.type for n, p in s.providers.items()} == {"anthropic": "anthropic", "openai": "openai", "mock": "mock"}


def test_an_entry_named_like_no_type_says_that_type_defaults_to_the_name():
    provider_error(".type", "claude", ANTHROPIC, "'claude'", "defaults to the entry's name")


@pytest.mark.parametrize("ptype, env_var", [("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY")])
def test_a_missing_api_key_names_the_environment_variable(ptype, env_var):
    provider_error(".api_key", "main", {"type": ptype, "models": ["*"]}, env_var)


def test_an_empty_api_key_is_missing_too():
    provider_error(".api_key", "anthropic", dict(ANTHROPIC, api_key=""), "ANTHROPIC_API_KEY")


def test_a_mock_provider_needs_no_key_and_no_url():
    p = providers(mock={"models": ["*"]}).providers["mock"]
    assert p.api_key == "" and p.type == "mock"


def test_api_keys_fall_back_to_the_environment():
    s = load_settings(
        {"LLM_PROXY_PROVIDERS": {"anthropic": {"models": ["*"]}, "openai": {"models": ["*"]}}},
        environ={"ANTHROPIC_API_KEY": "sk-ant-env", "OPENAI_API_KEY": "sk-openai-env"},
    )
    assert s.providers["anthropic"].api_key == "sk-ant-env"
    assert s.providers["openai"].api_key == "sk-openai-env"


def test_a_key_in_the_config_wins_over_the_environment():
    s = load_settings({"LLM_PROXY_PROVIDERS": {"anthropic": ANTHROPIC}}, environ={"ANTHROPIC_API_KEY": "sk-ant-env"})
    assert s.providers["anthropic"].api_key == "sk-ant-test"


def test_base_urls_fall_back_to_the_environment_then_to_the_official_ones():
    env = {"OPENAI_BASE_URL": "http://vllm.internal:8000/v1/", "OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}
    s = load_settings({"LLM_PROXY_PROVIDERS": {"openai": {"models": ["*"]}, "anthropic": {"models": ["*"]}}}, environ=env)
    assert s.providers["openai"].base_url == "http://vllm.internal:8000/v1"
    assert s.providers["anthropic"].base_url == "https://api.anthropic.com"
    s = load_settings(
        {"LLM_PROXY_PROVIDERS": {"anthropic": {"models": ["*"]}}},
        environ={"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": "http://gw.test"},
    )
    assert s.providers["anthropic"].base_url == "http://gw.test"


def test_the_environment_is_not_read_when_environ_is_given():
    # environ={} isolates from the real process environment (which may hold real keys)
    provider_error(".api_key", "anthropic", {"models": ["*"]}, "ANTHROPIC_API_KEY", environ={})


@pytest.mark.parametrize("url", ["api.anthropic.com", "ftp://x.test", "https://", "http:// spaced", 42])
def test_a_bad_base_url_names_the_key(url):
    provider_error(".base_url", "anthropic", dict(ANTHROPIC, base_url=url), "http")


@pytest.mark.parametrize(
    "entry, field_name",
    [
        ({"type": "openai", "api_key": "k", "models": ["*"]}, "max_completion_tokens"),
        ({"type": "openai", "api_key": "k", "models": ["*"], "base_url": "https://api.openai.com/v1/"}, "max_completion_tokens"),
        ({"type": "openai", "api_key": "k", "models": ["*"], "base_url": "http://localhost:11434/v1"}, "max_tokens"),
        ({"type": "openai", "api_key": "k", "models": ["*"], "base_url": "https://openrouter.ai/api/v1"}, "max_tokens"),
        ({"type": "openai", "api_key": "k", "models": ["*"], "max_tokens_field": "max_tokens"}, "max_tokens"),
        (
            {"type": "openai", "api_key": "k", "models": ["*"], "base_url": "http://l/v1", "max_tokens_field": "max_completion_tokens"},
            "max_completion_tokens",
        ),
        ({"type": "anthropic", "api_key": "k", "models": ["*"]}, "max_tokens"),
    ],
)
def test_max_tokens_field_follows_the_base_url_unless_set(entry, field_name):
    assert providers(p=entry).providers["p"].max_tokens_field == field_name


def test_official_openai_url_from_the_environment_gets_max_completion_tokens():
    s = load_settings(
        {"LLM_PROXY_PROVIDERS": {"openai": {"models": ["*"]}}},
        environ={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "https://api.openai.com/v1"},
    )
    assert s.providers["openai"].max_tokens_field == "max_completion_tokens"


def test_a_bad_max_tokens_field_names_the_key():
    provider_error(".max_tokens_field", "openai", dict(OPENAI, max_tokens_field="max_output_tokens"))


@pytest.mark.parametrize("models", [None, "gpt-4o", [], [""], ["gpt-4o", 3], {"gpt-4o": True}])
def test_a_bad_models_list_names_the_key(models):
    entry = dict(OPENAI, models=models)
    if models is None:
        del entry["models"]
    provider_error(".models", "openai", entry)


def test_an_unknown_provider_option_names_the_provider_and_the_option():
    provider_error("", "anthropic", dict(ANTHROPIC, temprature=0.5), "unknown option", "temprature")


@pytest.mark.parametrize("name", ["health", "models", "metrics", "static", "client.js", "a/b", "", "-x", "x" * 65])
def test_an_unusable_provider_name_is_refused(name):
    config_error("LLM_PROXY_PROVIDERS", repr(name), LLM_PROXY_PROVIDERS={name: {"type": "mock", "models": ["*"]}})


def test_providers_must_be_a_dict():
    config_error("LLM_PROXY_PROVIDERS", "dict", LLM_PROXY_PROVIDERS=[ANTHROPIC])


def test_a_provider_entry_must_be_a_dict():
    provider_error("", "anthropic", ["claude-*"], "dict")


@pytest.mark.parametrize("headers", [{"Host": "evil.test"}, {"content-length": "1"}, {"X-Extra": 1}, "X-A: b"])
def test_bad_extra_headers_are_refused(headers):
    provider_error(".headers", "anthropic", dict(ANTHROPIC, headers=headers))


@pytest.mark.parametrize(
    "api_key",
    [
        f"sk-ant-{SECRET}\n",
        f"sk-ant-{SECRET}\r\n",
        f"\tsk-ant-{SECRET}",
        f"sk-ant-{SECRET[:5]}\x00{SECRET[5:]}",
        f"sk-ant-{SECRET}\u2019",
        f"sk\u2013ant-{SECRET}",
        f"sk-ant-{SECRET} ",
        f" sk-ant-{SECRET}",
    ],
)
def test_an_api_key_that_cannot_be_sent_names_the_provider_but_never_shows_the_key(api_key):
    # A CR/LF, another control character or a non-latin-1 character would fail (or split) every
    # upstream request with a 500; the message goes to logs, so it describes the key, never quotes it.
    err = provider_error(".api_key", "anthropic", dict(ANTHROPIC, api_key=api_key), "not shown")
    assert_no_part_of(SECRET, str(err))
    assert_no_part_of(SECRET, repr(err))


def test_an_api_key_from_the_environment_is_checked_too_and_names_the_variable():
    err = provider_error(".api_key", "openai", {"models": ["*"]}, "OPENAI_API_KEY", environ={"OPENAI_API_KEY": f"sk-{SECRET}\n"})
    assert_no_part_of(SECRET, str(err))


def test_an_api_key_may_contain_any_printable_latin_1_character():
    assert providers(openai=dict(OPENAI, api_key="sk-a b~é")).providers["openai"].api_key == "sk-a b~é"


@pytest.mark.parametrize("value", [f"Bearer {SECRET}\r\nX-Evil: 1", f"{SECRET}\n", f"{SECRET}\u2019", f"\x7f{SECRET}"])
def test_a_header_value_that_cannot_be_sent_names_the_header_but_never_shows_the_value(value):
    err = provider_error(".headers", "openai", dict(OPENAI, headers={"X-Gateway-Auth": value}), "'X-Gateway-Auth'", "not shown")
    assert_no_part_of(SECRET, str(err))
    assert "Evil" not in str(err)


@pytest.mark.parametrize("name", ["X A", "X-A:", "", "X-\u00e9", "X-A\r\nX-B"])
def test_a_header_name_that_is_no_http_token_is_refused(name):
    provider_error(".headers", "openai", dict(OPENAI, headers={name: "1"}), "header name")


def test_good_extra_headers_are_kept():
    headers = {
        "OpenAI-Organization": "org-1",
        "X-Title": "Café demo",
        "HTTP-Referer": "https://app.test",
        "X-Tags": "a\tb",
    }  # a tab is legal
    assert providers(openai=dict(OPENAI, headers=headers)).providers["openai"].headers == headers


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/v1",
        "http://gw.test:0/v1",
        "http://gw.test:port/v1",
        "https://api.openai.com/v1 extra",
        " https://api.openai.com/v1",
        "https://api.openai.com/v1\n",
        "ws://gw.test/v1",
        "file:///etc/passwd",
        "http://:80",
        "https://api.openai.com/v1?x=1",
        "https://gw.test/v1#frag",
        "https://gw.test/v1?",
        "https://exämple.test/v1",
        "http://[::1/v1",
    ],
)
def test_a_base_url_that_cannot_be_used_names_the_provider_and_the_key(url):
    # each of these used to pass init_app and then fail every request
    provider_error(".base_url", "openai", dict(OPENAI, base_url=url), "http")


def test_a_bad_base_url_from_the_environment_names_the_variable():
    provider_error(
        ".base_url",
        "openai",
        {"models": ["*"]},
        "OPENAI_BASE_URL",
        environ={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://vllm:99999/v1"},
    )


@pytest.mark.parametrize(
    "url",
    ["http://localhost:11434/v1", "http://[::1]:8080/v1", "https://gw.example.com:65535/", "http://10.0.0.5", "HTTPS://API.example.com/v1"],
)
def test_usable_base_urls_are_accepted(url):
    assert providers(openai=dict(OPENAI, base_url=url)).providers["openai"].base_url == url.rstrip("/")


def test_anthropic_version_none_means_the_default_like_other_optional_provider_settings():
    # None used to be sent upstream as the header value "None"
    assert providers(anthropic=dict(ANTHROPIC, anthropic_version=None)).providers["anthropic"].anthropic_version == "2023-06-01"
    assert providers(anthropic=ANTHROPIC).providers["anthropic"].anthropic_version == "2023-06-01"
    assert providers(anthropic=dict(ANTHROPIC, anthropic_version="2024-01-01")).providers["anthropic"].anthropic_version == "2024-01-01"


@pytest.mark.parametrize("version", [2023, "", "2023-06-01\n", ["2023-06-01"]])
def test_an_anthropic_version_that_is_no_version_string_names_the_key(version):
    provider_error(".anthropic_version", "anthropic", dict(ANTHROPIC, anthropic_version=version), "'2023-06-01'")


@pytest.mark.parametrize("option, value", [("max_tokens", 0), ("max_tokens", "many"), ("max_messages", -1), ("max_body_bytes", 1.5)])
def test_bad_provider_limits_name_their_key(option, value):
    provider_error(f".{option}", "anthropic", dict(ANTHROPIC, **{option: value}))


def test_the_api_key_is_not_in_the_provider_repr():
    p = providers(anthropic=ANTHROPIC).providers["anthropic"]
    assert "sk-ant-test" not in repr(p)


# --- allows() ---------------------------------------------------------------------------------


def test_allows_exact_names_and_fnmatch_patterns():
    p = providers(openai=dict(OPENAI, models=["gpt-4o", "o1-*", "llama-3.1-?b", "claude-[hs]*"])).providers["openai"]
    for model in ("gpt-4o", "o1-mini", "o1-", "llama-3.1-8b", "claude-haiku", "claude-sonnet-4"):
        assert p.allows(model), model
    for model in ("gpt-4o-mini", "gpt-4", "xo1-mini", "llama-3x1-8b", "llama-3.1-70b", "claude-opus", "GPT-4O", ""):
        assert not p.allows(model), model


def test_an_exact_name_with_regex_characters_matches_only_itself():
    p = providers(openai=dict(OPENAI, models=["a.b+c"])).providers["openai"]
    assert p.allows("a.b+c")
    assert not p.allows("axbbc")


def test_a_star_allows_every_model():
    assert providers(mock={"models": ["*"]}).providers["mock"].allows("anything/at:all")


def test_a_pattern_must_match_the_whole_name():
    p = providers(openai=dict(OPENAI, models=["gpt-4o"], base_url="http://l/v1")).providers["openai"]
    assert not p.allows("gpt-4o\n")
    p = providers(openai=dict(OPENAI, models=["gpt-*-mini"])).providers["openai"]
    assert p.allows("gpt-4o-mini") and not p.allows("gpt-4o-mini-2024") and not p.allows("my-gpt-4o-mini")


# --- other settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", ["lots", "60", "60/fortnight", "60/minute;bad", "/minute", 60, ["60/minute"]])
def test_a_bad_rate_string_names_the_key(rate):
    config_error("LLM_PROXY_RATE_LIMIT", LLM_PROXY_RATE_LIMIT=rate)


def test_a_bad_token_quota_names_its_key():
    config_error("LLM_PROXY_TOKEN_QUOTA", "'100k/day'", LLM_PROXY_TOKEN_QUOTA="100k/day")


@pytest.mark.parametrize("rate", ["60/minute", "60 per minute", "10 per 2 minutes", "100/day;1000/month", "5/second, 100/hour", "1/Hour"])
def test_good_rate_strings_are_kept(rate):
    assert load(LLM_PROXY_RATE_LIMIT=rate).rate_limit == rate


@pytest.mark.parametrize("rate", [None, "", False])
def test_no_rate_limit(rate):
    assert load(LLM_PROXY_RATE_LIMIT=rate).rate_limit is None


@pytest.mark.parametrize("prefix", ["api", "/api/", "api/", 5, None])
def test_a_bad_prefix_names_the_key(prefix):
    config_error("LLM_PROXY_URL_PREFIX", LLM_PROXY_URL_PREFIX=prefix)


@pytest.mark.parametrize("prefix, expected", [("/api", "/api"), ("/llm/v1", "/llm/v1"), ("/", "")])
def test_good_prefixes(prefix, expected):
    assert load(LLM_PROXY_URL_PREFIX=prefix).url_prefix == expected


@pytest.mark.parametrize("origins", [["*"], "*", ["https://app.test", ".*"]])
def test_credentials_with_a_wildcard_origin_are_refused(origins):
    config_error("LLM_PROXY_CORS_ORIGINS", "LLM_PROXY_CORS_CREDENTIALS", LLM_PROXY_CORS_ORIGINS=origins, LLM_PROXY_CORS_CREDENTIALS=True)


def test_a_wildcard_origin_without_credentials_is_allowed():
    assert load(LLM_PROXY_CORS_ORIGINS=["*"]).cors_origins == ("*",)


def test_credentials_with_listed_origins_are_allowed():
    s = load(LLM_PROXY_CORS_ORIGINS=["https://app.test", r"https://.*\.app\.test"], LLM_PROXY_CORS_CREDENTIALS="true")
    assert s.cors_credentials is True and len(s.cors_origins) == 2


def test_an_origin_that_is_no_valid_regex_is_refused():
    config_error("LLM_PROXY_CORS_ORIGINS", "regular expression", LLM_PROXY_CORS_ORIGINS=["app(.test"])


@pytest.mark.parametrize(
    "origin, fixed",
    [
        ("https://app.example.com/", "https://app.example.com"),
        ("https://app.example.com/chat", "https://app.example.com"),
        ("http://localhost:5173/", "http://localhost:5173"),
        ("https://app.example.com:8443/index.html", "https://app.example.com:8443"),
        ("https://app.example.com:443", "https://app.example.com"),  # browsers leave the default port out
        ("https://App.Example.com/", "https://app.example.com"),
        ("https://app.example.com?x", "https://app.example.com"),
        ("https://user@app.example.com", "https://app.example.com"),
    ],
)
def test_an_origin_with_a_path_or_trailing_slash_names_the_key_and_the_corrected_origin(origin, fixed):
    # such an entry used to become a pattern that matches no Origin header: CORS silently off
    config_error("LLM_PROXY_CORS_ORIGINS", repr(origin), f"use {fixed!r}", LLM_PROXY_CORS_ORIGINS=["https://ok.test", origin])


@pytest.mark.parametrize("origin", ["https://", "http://app.test:99999", "http://app.test:0"])
def test_an_origin_without_a_usable_host_or_port_is_refused(origin):
    config_error("LLM_PROXY_CORS_ORIGINS", repr(origin), "scheme://host[:port]", LLM_PROXY_CORS_ORIGINS=[origin])


@pytest.mark.parametrize("origin", ["http://[::1]:8080/", "http://[::1]:99999", "https://[2001:db8::1]/app"])
def test_an_ipv6_url_that_is_no_origin_is_refused(origin):
    config_error("LLM_PROXY_CORS_ORIGINS", repr(origin), "scheme://[address][:port]", LLM_PROXY_CORS_ORIGINS=[origin])


def test_an_ipv6_origin_is_an_exact_origin_not_a_pattern():
    (matcher,) = cors_origin_matchers(load(LLM_PROXY_CORS_ORIGINS=["http://[::1]:8080"]).cors_origins)
    assert matcher.match("http://[::1]:8080") and not matcher.match("http://:8080") and not matcher.match("http://[::1]:80800")


@pytest.mark.parametrize(
    "entry, origin",
    [
        ("*", "https://any.test"),
        ("https://app.example.com", "https://app.example.com"),
        ("http://localhost:5173", "http://localhost:5173"),
        ("HTTPS://App.Example.com", "https://app.example.com"),
        (r"https://.*\.example\.org", "https://chat.example.org"),
        (r"https://[^/]+\.app\.test", "https://a.app.test"),
        (r"https?://app\.test(:\d+)?", "http://app.test:8080"),
        (r"http://\[::1\]:8080", "http://[::1]:8080"),
    ],
)
def test_exact_origins_wildcards_and_patterns_are_kept_and_match_their_origin(entry, origin):
    s = load(LLM_PROXY_CORS_ORIGINS=[entry])
    assert s.cors_origins == (entry,)
    (matcher,) = cors_origin_matchers(s.cors_origins)
    assert matcher in ("*", origin) or matcher.match(origin), (matcher, origin)


def test_budgets_with_an_unknown_limit_name_the_identity_and_the_limit():
    config_error("LLM_PROXY_BUDGETS['default']", "daily_dollars", "daily_usd", LLM_PROXY_BUDGETS={"default": {"daily_dollars": 5}})


def test_a_budget_limit_that_is_not_a_number_names_its_key():
    config_error("LLM_PROXY_BUDGETS['alice'].monthly_usd", LLM_PROXY_BUDGETS={"alice": {"monthly_usd": "lots"}})


def test_budgets_must_be_dicts():
    config_error("LLM_PROXY_BUDGETS", LLM_PROXY_BUDGETS=["default"])
    config_error("LLM_PROXY_BUDGETS['default']", LLM_PROXY_BUDGETS={"default": 5})


def test_good_budgets_are_parsed_to_floats():
    assert load(LLM_PROXY_BUDGETS={"default": {"daily_usd": 5, "monthly_tokens": "1000000"}}).budgets == {
        "default": {"daily_usd": 5.0, "monthly_tokens": 1_000_000.0}
    }


@pytest.mark.parametrize("price", [{"input": 3.0}, {"output": 15.0}, {}, 3.0])
def test_pricing_without_input_and_output_names_the_model(price):
    config_error("LLM_PROXY_PRICING['claude-*']", "'input' and 'output'", LLM_PROXY_PRICING={"claude-*": price})


def test_pricing_with_an_unknown_price_names_it():
    config_error("LLM_PROXY_PRICING['gpt-4o']", "'reasoning'", LLM_PROXY_PRICING={"gpt-4o": {"input": 2.5, "output": 10, "reasoning": 1}})


def test_a_price_that_is_not_a_number_names_its_key():
    config_error("LLM_PROXY_PRICING['gpt-4o'].output", LLM_PROXY_PRICING={"gpt-4o": {"input": 2.5, "output": "ten"}})


def test_good_pricing_is_kept():
    pricing = {"claude-*": {"input": 3, "output": 15, "cache_read": 0.3}, "free-model": None}
    assert load(LLM_PROXY_PRICING=pricing).pricing == pricing


def test_prices_given_as_strings_are_stored_as_numbers():
    # JSON from the environment may quote them; pricing.py multiplies what is stored
    s = load(LLM_PROXY_PRICING={"gpt-4o": {"input": "2.5", "output": "10", "cache_read": "1.25"}, "old-model": None})
    assert s.pricing == {"gpt-4o": {"input": 2.5, "output": 10.0, "cache_read": 1.25}, "old-model": None}
    assert all(type(p) is float for p in s.pricing["gpt-4o"].values())
    assert PriceTable(s.pricing, defaults=False).cost("gpt-4o", 1_000_000, 1_000_000) == 12.5


@pytest.mark.parametrize(
    "key, value",
    [
        ("LLM_PROXY_READ_TIMEOUT", "nan"),
        ("LLM_PROXY_READ_TIMEOUT", float("nan")),
        ("LLM_PROXY_READ_TIMEOUT", "inf"),
        ("LLM_PROXY_CONNECT_TIMEOUT", float("inf")),
        ("LLM_PROXY_RETRY_BACKOFF", "NaN"),
        ("LLM_PROXY_RETRY_AFTER_MAX", "Infinity"),
        ("LLM_PROXY_KEEPALIVE", "inf"),
        ("LLM_PROXY_KEEPALIVE", "-inf"),
    ],
)
def test_a_number_that_is_not_finite_names_its_key(key, value):
    # nan passed every ">= minimum" check (all comparisons with nan are False), then broke each
    # request; no setting gives inf a meaning ("no keep-alive" is None, "no limit" is no entry)
    config_error(key, "finite", **{key: value})


def test_a_budget_price_or_mock_pace_that_is_not_finite_names_its_key():
    config_error("LLM_PROXY_BUDGETS['default'].daily_tokens", "finite", LLM_PROXY_BUDGETS={"default": {"daily_tokens": "nan"}})
    config_error("LLM_PROXY_BUDGETS['alice'].monthly_usd", "finite", LLM_PROXY_BUDGETS={"alice": {"monthly_usd": float("inf")}})
    config_error("LLM_PROXY_PRICING['gpt-4o'].input", "finite", LLM_PROXY_PRICING={"gpt-4o": {"input": "nan", "output": 1}})
    provider_error(".pace_ms", "mock", {"models": ["*"], "pace_ms": "nan"}, "finite")


@pytest.mark.parametrize(
    "key, value",
    [
        ("LLM_PROXY_REQUIRE_AUTH", "maybe"),
        ("LLM_PROXY_METRICS", 2),
        ("LLM_PROXY_MAX_RETRIES", -1),
        ("LLM_PROXY_MAX_RETRIES", 1.5),
        ("LLM_PROXY_MAX_BODY_BYTES", 0),
        ("LLM_PROXY_READ_TIMEOUT", 0),
        ("LLM_PROXY_READ_TIMEOUT", "soon"),
        ("LLM_PROXY_RETRY_BACKOFF", -1),
        ("LLM_PROXY_KEEPALIVE", "often"),
        ("LLM_PROXY_MODELS_CLAIM", 5),
        ("LLM_PROXY_USAGE_STORE", "postgres://db"),
        ("LLM_PROXY_METRICS_ALLOW", [1]),
        ("LLM_PROXY_DEFAULT_MAX_TOKENS", 0),
        ("LLM_PROXY_MAX_TOKENS", "lots"),
    ],
)
def test_a_wrongly_typed_setting_names_its_key(key, value):
    config_error(key, **{key: value})


def test_strings_from_the_environment_are_parsed():
    s = load(LLM_PROXY_REQUIRE_AUTH="off", LLM_PROXY_MAX_RETRIES="3", LLM_PROXY_READ_TIMEOUT="2.5", LLM_PROXY_KEEPALIVE="0")
    assert (s.require_auth, s.max_retries, s.read_timeout, s.keepalive) == (False, 3, 2.5, None)


BOOLEAN_KEYS = sorted(k for k, v in DEFAULTS.items() if isinstance(v, bool))


def test_every_boolean_key_takes_the_same_explicit_words():
    """An empty or odd value (``LLM_PROXY_REQUIRE_AUTH=``) must never switch a boolean off."""
    from flask_llm_proxy.config import KEYS, checks

    assert "LLM_PROXY_REQUIRE_AUTH" in BOOLEAN_KEYS
    assert all(k.check is checks.boolean for k in KEYS if isinstance(k.default, bool))


def test_an_empty_require_auth_does_not_switch_auth_off():
    # LLM_PROXY_REQUIRE_AUTH= (set but empty in the environment) used to mean False
    config_error("LLM_PROXY_REQUIRE_AUTH", "''", LLM_PROXY_REQUIRE_AUTH="")


@pytest.mark.parametrize("key", BOOLEAN_KEYS)
@pytest.mark.parametrize("value", ["", " ", "ture", "none", "null", "enabled", None, 2, -1, 1.0, "2"])
def test_every_boolean_key_refuses_anything_but_an_explicit_word(key, value):
    config_error(key, repr(value), **{key: value})


@pytest.mark.parametrize("key", BOOLEAN_KEYS)
def test_every_boolean_key_accepts_the_usual_words_in_any_case(key):
    attr = key[len("LLM_PROXY_") :].lower()
    for value in (True, 1, "1", "true", "True", " YES ", "on"):
        assert getattr(load(**{key: value}), attr) is True, value
    for value in (False, 0, "0", "false", "FALSE", "no", " Off "):
        assert getattr(load(**{key: value}), attr) is False, value


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "localhost", "10.0.0.300", "metrics.example.com", "::1/129", " 10.0.0.1", "10.0.0.0/8;"])
def test_a_metrics_allow_entry_that_is_no_address_or_network_names_the_key_and_the_entry(entry):
    # metrics.address_allowed skips an entry it cannot parse: a typo used to lock everyone out
    config_error("LLM_PROXY_METRICS_ALLOW", repr(entry), LLM_PROXY_METRICS_ALLOW=["127.0.0.1", entry])


def test_localhost_in_metrics_allow_says_which_addresses_to_use():
    config_error("LLM_PROXY_METRICS_ALLOW", "127.0.0.1", "::1", LLM_PROXY_METRICS_ALLOW=["localhost"])


def test_metrics_allow_keeps_addresses_and_networks():
    s = load(LLM_PROXY_METRICS_ALLOW="127.0.0.1, ::1, 10.0.0.0/8, 10.1.2.3/8, fd00::/8")
    assert s.metrics_allow == ("127.0.0.1", "::1", "10.0.0.0/8", "10.1.2.3/8", "fd00::/8")


@pytest.mark.parametrize(
    "store", ["memory://", "nonesuch", "none-of-that", "None", "NONE", "sqlite://relative.db", "sqlite:///", "postgres://db", 5]
)
def test_a_usage_store_that_open_store_cannot_open_names_the_key(store):
    # these used to pass load_settings and then fail in ledger.open_store without naming the key
    config_error("LLM_PROXY_USAGE_STORE", **{"LLM_PROXY_USAGE_STORE": store})


@pytest.mark.parametrize(
    "store, expected",
    [
        (None, None),
        ("", None),
        ("none", "none"),
        ("sqlite:///usage.sqlite3", "sqlite:///usage.sqlite3"),
        ("sqlite:////var/lib/llm/usage.sqlite3", "sqlite:////var/lib/llm/usage.sqlite3"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("rediss://cache.example.com", "rediss://cache.example.com"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_every_usage_store_open_store_understands_is_accepted(store, expected):
    assert load(LLM_PROXY_USAGE_STORE=store).usage_store == expected


def test_an_accepted_local_usage_store_opens(tmp_path):
    assert isinstance(open_store(load(LLM_PROXY_USAGE_STORE="none").usage_store, str(tmp_path)), NullStore)
    for store in ("", "sqlite:///usage.sqlite3"):
        opened = open_store(load(LLM_PROXY_USAGE_STORE=store).usage_store, str(tmp_path))
        assert isinstance(opened, SQLiteStore)
        opened.close()


# --- misspelt keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typo, meant",
    [
        ("LLM_PROXY_RATE_LIMT", "LLM_PROXY_RATE_LIMIT"),
        ("LLM_PROXY_PROVIDER", "LLM_PROXY_PROVIDERS"),
        ("LLM_PROXY_CORS_ORIGIN", "LLM_PROXY_CORS_ORIGINS"),
    ],
)
def test_an_unknown_key_warns_naming_the_closest_key(typo, meant):
    with pytest.warns(UserWarning, match=f"unknown setting {typo}; did you mean {meant}\\?"):
        load(**{typo: "x"})


def test_an_unknown_key_with_nothing_close_warns_without_a_guess():
    with pytest.warns(UserWarning, match="unknown setting LLM_PROXY_ZZZZZZZZZZZZZZZZ$"):
        load(LLM_PROXY_ZZZZZZZZZZZZZZZZ=1)


def test_known_keys_and_other_apps_keys_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_settings({**DEFAULTS, "SECRET_KEY": "x", "RATELIMIT_STORAGE_URI": "memory://", "JWT_SECRET_KEY": "y"}, environ={})


# --- through Flask ----------------------------------------------------------------------------


@pytest.fixture
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """init_app reads os.environ: keep the machine's own keys and base URLs out of these tests."""
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update({"LLM_PROXY_REQUIRE_AUTH": False, "LLM_PROXY_RATE_LIMIT": None, **config})
    return app


def test_init_app_builds_the_settings_once(no_key_env):
    app = make_app(LLM_PROXY_PROVIDERS={"anthropic": ANTHROPIC, "mock": {"models": ["*"]}})
    LLMProxy(app)
    state = LLMProxy.state(app)
    assert set(state.settings.providers) == {"anthropic", "mock"}
    assert app.config["LLM_PROXY_MAX_RETRIES"] == DEFAULTS["LLM_PROXY_MAX_RETRIES"], "defaults are written into app.config"
    assert {"/api/anthropic", "/api/mock", "/api/health", "/api/models"} <= {r.rule for r in app.url_map.iter_rules()}


def test_init_app_with_the_factory_pattern(no_key_env):
    ext = LLMProxy()
    app = make_app(LLM_PROXY_PROVIDERS={"mock": {"models": ["*"]}}, LLM_PROXY_URL_PREFIX="/llm")
    ext.init_app(app)
    assert "/llm/mock" in {r.rule for r in app.url_map.iter_rules()}


@pytest.mark.parametrize(
    "config, key",
    [
        ({"LLM_PROXY_PROVIDERS": {"anthropic": {"models": ["*"]}}}, "LLM_PROXY_PROVIDERS['anthropic'].api_key"),
        ({"LLM_PROXY_URL_PREFIX": "api"}, "LLM_PROXY_URL_PREFIX"),
        ({"LLM_PROXY_RATE_LIMIT": "often"}, "LLM_PROXY_RATE_LIMIT"),
        ({"LLM_PROXY_PROVIDERS": {"mock": {"models": "*"}}}, "LLM_PROXY_PROVIDERS['mock'].models"),
    ],
)
def test_a_wrong_setting_raises_at_init_app(no_key_env, config, key):
    app = make_app(**config)
    with pytest.raises(ConfigError) as info:
        LLMProxy(app)
    assert info.value.key == key
    assert "llm_proxy" not in app.extensions


def test_require_auth_without_a_jwt_manager_raises_at_init_app(no_key_env):
    app = make_app(LLM_PROXY_REQUIRE_AUTH=True, LLM_PROXY_PROVIDERS={"mock": {"models": ["*"]}})
    with pytest.raises(ConfigError) as info:
        LLMProxy(app)
    assert info.value.key == "LLM_PROXY_REQUIRE_AUTH"
    assert "JWTManager" in str(info.value)


def test_require_auth_is_on_by_default():
    app = Flask(__name__)
    app.config["LLM_PROXY_RATE_LIMIT"] = None
    with pytest.raises(ConfigError) as info:
        LLMProxy(app)
    assert info.value.key == "LLM_PROXY_REQUIRE_AUTH"


def test_require_auth_with_a_jwt_manager_is_accepted(no_key_env):
    from flask_jwt_extended import JWTManager

    app = make_app(LLM_PROXY_REQUIRE_AUTH=True, JWT_SECRET_KEY="x" * 32, LLM_PROXY_PROVIDERS={"mock": {"models": ["*"]}})
    JWTManager(app)
    LLMProxy(app)
    assert LLMProxy.state(app).settings.require_auth is True


def test_a_misspelt_key_warns_at_init_app(no_key_env):
    app = make_app(LLM_PROXY_PROVIDERS={"mock": {"models": ["*"]}}, LLM_PROXY_READ_TIMOUT=5)
    with pytest.warns(UserWarning, match="LLM_PROXY_READ_TIMOUT; did you mean LLM_PROXY_READ_TIMEOUT"):
        LLMProxy(app)


def test_two_apps_keep_their_own_settings(no_key_env):
    ext = LLMProxy()
    a = make_app(LLM_PROXY_PROVIDERS={"mock": {"models": ["a-*"]}})
    b = make_app(LLM_PROXY_PROVIDERS={"mock": {"models": ["b-*"]}}, LLM_PROXY_URL_PREFIX="/b")
    ext.init_app(a)
    ext.init_app(b)
    assert LLMProxy.state(a).settings.providers["mock"].allows("a-1")
    assert not LLMProxy.state(b).settings.providers["mock"].allows("a-1")
    assert LLMProxy.state(b).settings.url_prefix == "/b"


@pytest.mark.parametrize(
    "ptype, header, hint",
    [
        ("openai", "Authorization", "'api_key'"),
        ("anthropic", "X-Api-Key", "'api_key'"),
        ("anthropic", "anthropic-version", "'anthropic_version'"),
        ("openai", "Content-Type", "set by the proxy"),
        ("anthropic", "X-Request-ID", "set by the proxy"),
    ],
)
def test_a_header_the_proxy_sends_itself_cannot_be_configured_twice(ptype: str, header: str, hint: str) -> None:
    """Header names are case-insensitive: a configured 'Authorization' would go out next to the
    proxy's own 'authorization', and which one the upstream reads is anyone's guess."""
    provider = {"type": ptype, "api_key": "k", "base_url": "https://api.example.com", "models": ["*"], "headers": {header: "v"}}
    err = config_error("LLM_PROXY_PROVIDERS['p'].headers", LLM_PROXY_PROVIDERS={"p": provider})
    assert header in str(err) and hint in str(err)


@pytest.mark.parametrize("key", ["LLM_PROXY_RATE_LIMIT", "LLM_PROXY_TOKEN_QUOTA"])
@pytest.mark.parametrize("rate", ["0/minute", "10/0 minutes", "60/minute;0 per day"])
def test_a_rate_of_zero_or_over_no_time_names_the_key(key: str, rate: str) -> None:
    """0/minute would refuse everyone and 10/0 minutes count nothing: neither is what anyone meant."""
    config_error(key, "at least 1", **{key: rate})


def test_max_retries_has_a_sane_ceiling() -> None:
    config_error("LLM_PROXY_MAX_RETRIES", "<= 10", LLM_PROXY_MAX_RETRIES=10**9)
    assert load(LLM_PROXY_MAX_RETRIES=10).max_retries == 10
