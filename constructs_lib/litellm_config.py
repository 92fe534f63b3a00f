"""Read and check `litellm/config.yaml` at synth: the models it routes to and the environment it expects."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from constructs_lib.timeouts import ALB_IDLE_TIMEOUT_SECONDS, LLM_REQUEST_TIMEOUT_SECONDS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / "litellm" / "config.yaml"
ENV_REF = re.compile(r"^os\.environ/([A-Z_][A-Z0-9_]*)$")
CREDENTIAL_KEYS = ("api_key", "master_key", "database_url", "aws_secret_access_key", "aws_access_key_id", "salt_key",
                   "password")
# Bedrock cross-region inference profiles start with a geography; their ids name the foundation model after it.
PROFILE_PREFIXES = ("us.", "eu.", "apac.", "jp.", "au.", "ca.", "global.")
BEDROCK_ROUTES = ("converse/", "invoke/")
MAX_REDIS_TTL_SECONDS = 86400
# What the corporate LLM gateway's models read: an environment without a gateway gets none of them.
GATEWAY_ENVIRONMENT = frozenset({"CUSTOM_LLM_API_BASE", "CUSTOM_LLM_CLAUDE_API_BASE", "CUSTOM_LLM_API_KEY"})
GENERATED_DIR = ROOT / "build" / "litellm"
# The shared state every replica must use (litellm_settings.cache_params): the Data stack's Redis, over TLS with its
# AUTH token, holding usage state only.
SHARED_STATE = {
    "type": "redis",
    "host": "os.environ/REDIS_HOST",
    "port": "os.environ/REDIS_PORT",
    "password": "os.environ/REDIS_PASSWORD",
    "ssl": True,
    "supported_call_types": [],
}


class LiteLLMConfigError(ValueError):
    pass


# Which regions may call a cross-region inference profile of each geography (Bedrock's inference profiles: a profile
# routes within its geography and is called from a region of it); `global.` profiles from any commercial region.
PROFILE_REGIONS = {
    "us.": ("us-",), "eu.": ("eu-",), "apac.": ("ap-",), "ca.": ("ca-",),
    "jp.": ("ap-northeast-1", "ap-northeast-3"), "au.": ("ap-southeast-2", "ap-southeast-4"), "global.": ("",),
}


def region_problems(config: LiteLLMConfig, region: str) -> list[str]:
    """The Bedrock models of the file that `region` cannot call: an inference profile of another geography."""
    problems = []
    for model in config.bedrock_models:
        prefix = next((p for p in PROFILE_PREFIXES if model.model_id.startswith(p)), None)
        if prefix is None or region.startswith(PROFILE_REGIONS[prefix]):
            continue
        fitting = [p for p, regions in PROFILE_REGIONS.items() if p != "global." and region.startswith(regions)]
        problems.append(
            f"bedrock/{model.model_id} is a {prefix.rstrip('.')} inference profile, which {region} cannot call: use "
            f"{' or '.join(f'{p}{model.foundation_model_id}' for p in fitting + ['global.'])}")
    return problems


@dataclass(frozen=True)
class BedrockModel:
    model_id: str  # as LiteLLM calls it: a foundation model id or an inference profile id

    @property
    def is_inference_profile(self) -> bool:
        return self.model_id.startswith(PROFILE_PREFIXES)

    @property
    def foundation_model_id(self) -> str:
        if self.is_inference_profile:
            return self.model_id.split(".", 1)[1]
        return self.model_id


@dataclass(frozen=True)
class LiteLLMConfig:
    path: Path
    model_names: tuple[str, ...]
    bedrock_models: tuple[BedrockModel, ...]
    environment_names: frozenset[str]  # every NAME in an `os.environ/NAME` value
    request_timeout_seconds: float  # litellm_settings.request_timeout


def _walk(value: object, where: str, found: set[str], problems: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}" if where else str(key)
            if key in CREDENTIAL_KEYS and not (isinstance(item, str) and ENV_REF.match(item)):
                problems.append(f"{here}: a credential must be `os.environ/NAME`, never a literal value")
            _walk(item, here, found, problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{where}[{index}]", found, problems)
    elif isinstance(value, str) and value.startswith("os.environ/"):
        match = ENV_REF.match(value)
        if match:
            found.add(match.group(1))
        else:
            problems.append(f"{where}: {value!r} is not `os.environ/NAME` with an upper-case NAME")


def load_litellm_config(path: Path = DEFAULT_PATH) -> LiteLLMConfig:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise LiteLLMConfigError(f"{path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("model_list"), list) or not document["model_list"]:
        raise LiteLLMConfigError(f"{path}: needs a non-empty `model_list`")

    problems: list[str] = []
    names: list[str] = []
    bedrock: list[BedrockModel] = []
    for index, entry in enumerate(document["model_list"]):
        params = entry.get("litellm_params") if isinstance(entry, dict) else None
        name = entry.get("model_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(params, dict) or not isinstance(params.get("model"), str):
            problems.append(f"model_list[{index}]: needs model_name and litellm_params.model")
            continue
        if name in names:
            problems.append(f"model_list[{index}]: model_name {name!r} appears twice")
        names.append(name)
        model = params["model"]
        if model.startswith("bedrock/"):
            model_id = model.removeprefix("bedrock/")
            for route in BEDROCK_ROUTES:
                model_id = model_id.removeprefix(route)
            if not re.fullmatch(r"[a-z0-9.-]+:\d+", model_id):
                problems.append(f"model_list[{index}]: {model!r} is not a versioned Bedrock model id (`vendor.model-v1:0`)")
            else:
                bedrock.append(BedrockModel(model_id))
    found: set[str] = set()
    _walk(document, "", found, problems)
    settings = document.get("litellm_settings")
    settings = settings if isinstance(settings, dict) else {}
    timeout = settings.get("request_timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= LLM_REQUEST_TIMEOUT_SECONDS:
        problems.append(
            f"litellm_settings.request_timeout: {timeout!r}; needs a number of seconds, at most {LLM_REQUEST_TIMEOUT_SECONDS}: "
            f"the ALB closes connections idle for {ALB_IDLE_TIMEOUT_SECONDS} s, and a call silent longer than that would "
            "get a 504 while LiteLLM goes on calling the model (raise LLM_REQUEST_TIMEOUT_SECONDS in "
            "constructs_lib/timeouts.py to allow more: the ALB's idle timeout follows it)"
        )
    problems += _shared_state_problems(settings)
    if problems:
        raise LiteLLMConfigError(f"{path}:\n  " + "\n  ".join(problems))
    return LiteLLMConfig(path, tuple(names), tuple(dict.fromkeys(bedrock)), frozenset(found), float(timeout))


def _shared_state_problems(settings: dict) -> list[str]:
    """Several replicas count limits and spend together only through Redis (`cache: true` with redis cache_params;
    the router takes the same connection); the Redis keeps Langfuse's queues and evicts nothing, so no response is
    cached there."""
    if settings.get("cache") is not True:
        return ["litellm_settings.cache: must be true (the replicas' shared usage state in Redis; nothing is cached: "
                "cache_params.supported_call_types is [])"]
    params = settings.get("cache_params")
    params = params if isinstance(params, dict) else {}
    wrong = [f"{key}: {params.get(key)!r} (needs {value!r})" for key, value in SHARED_STATE.items() if params.get(key) != value]
    if isinstance(params.get("db"), bool) or not isinstance(params.get("db"), int) or params.get("db") == 0:
        wrong.append(f"db: {params.get('db')!r} (needs a database number other than 0, which holds Langfuse's queues)")
    problems = [f"litellm_settings.cache_params.{problem}" for problem in wrong]
    ttl = settings.get("default_redis_ttl")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_REDIS_TTL_SECONDS:
        problems.append(f"litellm_settings.default_redis_ttl: {ttl!r} (needs seconds, at most {MAX_REDIS_TTL_SECONDS}: "
                        "every key expires, or callers naming new end users and tags fill a Redis that evicts nothing)")
    elif list(settings).index("default_redis_ttl") > list(settings).index("cache"):
        problems.append("litellm_settings.default_redis_ttl: must come before `cache` (LiteLLM applies the settings in "
                        "order and reads it when it opens the Redis connection)")
    return problems


def _geography(region: str) -> str | None:
    """The inference-profile prefix of a region's own geography (us., eu., apac., ca.), None when it has none."""
    return next((prefix for prefix in ("us.", "eu.", "apac.", "ca.") if region.startswith(PROFILE_REGIONS[prefix])), None)


def for_environment(path: Path, name: str, *, region: str, gateway: bool) -> Path:
    """The config an environment's LiteLLM gets: `path` itself when it fits, else a copy written to
    build/litellm/<name>.yaml (the same every synth) with
    - each inference profile of another geography moved to the region's (us.X in eu-central-1 becomes eu.X;
      `global.` profiles and plain model ids stay);
    - without a corporate gateway, none of the models that call it (any `os.environ/CUSTOM_LLM_*`)."""
    document = yaml.safe_load(path.read_text())
    geography = _geography(region)
    notes = []
    models = []
    for entry in document["model_list"]:
        found: set[str] = set()
        _walk(entry, "", found, [])
        if not gateway and found & GATEWAY_ENVIRONMENT:
            continue
        params = entry.get("litellm_params", {}) if isinstance(entry, dict) else {}
        model = params.get("model", "")
        if geography and isinstance(model, str) and model.startswith("bedrock/"):
            route, _, model_id = model.removeprefix("bedrock/").rpartition("/")
            prefix = next((p for p in PROFILE_PREFIXES if model_id.startswith(p)), None)
            if prefix and prefix != "global." and not region.startswith(PROFILE_REGIONS[prefix]):
                moved = f"bedrock/{route + '/' if route else ''}{geography}{model_id.removeprefix(prefix)}"
                entry = {**entry, "litellm_params": {**params, "model": moved}}
                notes.append(f"{model} -> {moved}")
        models.append(entry)
    if not gateway:
        notes.append("without the corporate gateway's models")
    if not notes:
        return path
    if not models:
        raise LiteLLMConfigError(f"{path}: no model is left for environment {name} ({'; '.join(notes)})")
    GENERATED_DIR.mkdir(parents=True, exist_ok=True)
    target = GENERATED_DIR / f"{name}.yaml"
    text = f"# {path.name} for environment {name} ({region}): " + "; ".join(notes) + "\n"
    text += yaml.safe_dump({**document, "model_list": models}, sort_keys=False)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return target
