"""docker-compose.yml, checked without Docker: valid against the Compose Specification's JSON
schema (tests/fixtures/schemas/compose-spec.json), every gateway command parsed by the real
CLI, every environment variable a setting (and valid as one), every long-running service
with a healthcheck, every `${VAR}` explained in .env.example. The whole gateway configuration
accepted by production mode with certificates from deploy/make-certs.sh (a subprocess) is
tests/e2e/test_compose_certificates.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import jsonschema
import typer.main
import yaml

from attest_gateway.config import Settings, load_settings
from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.production import env_name

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SCHEMA = ROOT / "tests" / "fixtures" / "schemas" / "compose-spec.json"
GATEWAY_IMAGE = "attest-gateway:"
# Environment variables the gateway's processes read that are not Settings, with the reason.
NOT_SETTINGS = {
    "PGSSLROOTCERT": "read by asyncpg: the CA of the database's TLS certificate",
    "PYTHONUNBUFFERED": "Python itself (Dockerfile)",
    "SOFTHSM2_CONF": "read by SoftHSM2's PKCS#11 library: where its token directory is",
    "PKCS11_SO_PIN": "tls-init: the token's security officer PIN, to initialise it (softhsm2-util)",
}
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text("utf-8"))
    return data


def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text("utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _gateway_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in doc["services"].items()
        if str(svc.get("image", "")).startswith(GATEWAY_IMAGE)
    }


def _interpolate(value: str, env: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg or ""
        raise AssertionError(f"${{{name}}} has no value and no default")

    return _INTERPOLATION.sub(sub, value).replace("$$", "$")


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text("utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _parse_cli(args: list[str]) -> None:
    """Parse arguments with the real `attest-gateway` command, without running it."""
    command: Any = typer.main.get_command(cli.app)
    ctx = click.Context(command, info_name="attest-gateway")
    rest = list(args)
    while hasattr(command, "get_command"):  # the app, or a sub-group such as `config`
        name, rest = rest[0], rest[1:]
        sub = command.get_command(ctx, name)
        assert sub is not None, f"attest-gateway has no command {name!r} ({args})"
        command = sub
        if hasattr(command, "get_command"):
            ctx = click.Context(command, info_name=name, parent=ctx)
    command.make_context(name, rest, parent=ctx)  # parses options: unknown ones fail


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator().iter_errors(_compose())
    ]
    assert errors == []


def test_the_schema_check_would_catch_a_mistake() -> None:
    doc = _compose()
    doc["services"]["api"]["depends_on"]["kafka"]["condition"] = "service_ready"
    doc["services"]["worker"]["restart_policy"] = "always"
    assert len(list(_validator().iter_errors(doc))) >= 2


def test_the_stack_has_what_the_design_names() -> None:
    services = _compose()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["api"]["command"] == ["serve", "--role", "api"]
    assert services["worker"]["command"] == ["serve", "--role", "worker"]
    assert "tracker" in services
    assert "ports" not in services["api"]  # one port for all replicas: the load balancer's
    assert services["lb"]["ports"] == ["${GATEWAY_PORT:-8443}:8443"]


def test_long_running_services_have_healthchecks_and_wait_for_healthy_dependencies() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        one_shot = svc.get("restart") == "no"
        if not one_shot:
            assert "test" in svc.get("healthcheck", {}), f"{name} has no healthcheck"
        for dep, rule in svc.get("depends_on", {}).items():
            dep_svc = services[dep]
            wanted = (
                "service_completed_successfully"
                if dep_svc.get("restart") == "no"
                else "service_healthy"
            )
            assert rule["condition"] == wanted, f"{name} → {dep}"


def test_every_gateway_command_and_healthcheck_is_a_real_cli_command() -> None:
    services = _gateway_services(_compose())
    assert {"init", "api", "worker", "tracker", "tls-init"} <= set(services)
    for name, svc in services.items():
        if svc.get("entrypoint"):  # tls-init runs a shell, not the gateway
            continue
        _parse_cli(svc["command"])
        test = svc.get("healthcheck", {}).get("test")
        if test:
            assert test[:2] == ["CMD", "attest-gateway"], name
            _parse_cli(test[2:])


def test_every_gateway_environment_variable_is_a_setting_and_valid() -> None:
    settings_vars = {env_name(n) for n in Settings.model_fields}
    env = _env_example() | {
        k: "0123456789abcdef" * 4 for k, v in _env_example().items() if not v
    }  # secrets are empty in the example: any random-looking value will do here
    for name, svc in _gateway_services(_compose()).items():
        variables = svc.get("environment", {})
        unknown = set(variables) - settings_vars - set(NOT_SETTINGS)
        assert not unknown, f"{name}: {sorted(unknown)} are not settings"
        values = {k.lower(): _interpolate(str(v), env) for k, v in variables.items()}
        load_settings(**{k: v for k, v in values.items() if k.upper() in settings_vars})


def test_the_dockerfile_uses_real_settings_and_commands() -> None:
    text = DOCKERFILE.read_text("utf-8")
    settings_vars = {env_name(n) for n in Settings.model_fields}
    env_block = re.search(r"^ENV (.+?)(?=^\S)", text, re.M | re.S)
    assert env_block is not None
    names = set(re.findall(r"(?<![A-Z0-9_])([A-Z][A-Z0-9_]*)=", env_block.group(1)))
    assert names - settings_vars <= set(NOT_SETTINGS)
    for instruction in ("CMD", "ENTRYPOINT"):
        match = re.search(rf"^{instruction} (\[.+\])$", text, re.M)
        assert match is not None
    _parse_cli(json.loads(re.search(r"^CMD (\[.+\])$", text, re.M).group(1)))  # type: ignore[union-attr]
    health = re.search(r'CMD \["attest-gateway", (.+)\]\s*$', text, re.M)
    assert health is not None
    _parse_cli(json.loads(f"[{health.group(1)}]"))


def test_every_interpolated_variable_is_in_env_example_or_has_a_default() -> None:
    example = _env_example()
    for match in _INTERPOLATION.finditer(COMPOSE.read_text("utf-8")):
        name, op = match.group(1), match.group(2)
        assert name in example or op in (":-", "-"), f"${{{name}}} is not in .env.example"


def test_secrets_are_not_baked_in() -> None:
    example = _env_example()
    for secret in ("POSTGRES_PASSWORD", "PSEUDONYM_KEY", "METRICS_TOKEN", "PKCS11_PIN",
                   "PKCS11_SO_PIN"):  # fmt: skip
        assert example[secret] == "", f"{secret} must be empty in .env.example"
        assert f"${{{secret}:?" in COMPOSE.read_text("utf-8"), f"{secret} must be required"
    assert (
        ".env" in (ROOT / ".gitignore").read_text("utf-8").split()
        or (ROOT / ".dockerignore").exists()
    )
