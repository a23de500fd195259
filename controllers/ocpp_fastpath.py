"""The ``ocpp`` library's per-message path made cheap, without changing what it does (both ends use it).

The library validates every message against its bundled JSON schemas with ``jsonschema``,
which costs 420-560 µs per message; the same schemas compiled once with ``fastjsonschema`` cost
19-37 µs (LIBRARIES.md). Skipping validation is not an option: malformed input from a
controller is a finding. :func:`install_compiled_validators` swaps the library's validator
factory for one that compiles each schema once and raises the same ``jsonschema`` errors, so
the library still maps a failure to the right CallError (TypeConstraintViolation,
FormationViolation, ProtocolError …).

The library also converts every key of every message between camelCase and snake_case with
regular expressions (150-210 µs a message); the same conversions memoised per key cost ~20 µs.
:func:`install` does both.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import fastjsonschema
from jsonschema.exceptions import ValidationError as SchemaValidationError
from ocpp import charge_point, messages

_compiled: dict[tuple[str, str], "_CompiledValidator"] = {}


class _CompiledValidator:
    def __init__(self, schema: dict, decimal_payloads: bool) -> None:
        self._validate = fastjsonschema.compile(schema, use_default=False)  # validate, never fill in defaults
        self._decimal_payloads = decimal_payloads

    def validate(self, payload: Any) -> None:
        if self._decimal_payloads:
            # The library hands 1.6 profile messages over with Decimal numbers (a jsonschema
            # precision workaround); fastjsonschema checks multipleOf exactly on floats itself.
            payload = json.loads(json.dumps(payload, default=float))
        try:
            self._validate(payload)
        except fastjsonschema.JsonSchemaValueException as error:
            raise SchemaValidationError(error.message, validator=error.rule or "") from None


def _schema_path(message_type_id: int, action: str, ocpp_version: str) -> tuple[str, str]:
    name = action
    if message_type_id == messages.MessageType.CallResult:
        name += "Response"
    elif message_type_id == messages.MessageType.Call and ocpp_version in ("2.0", "2.0.1", "2.1"):
        name += "Request"
    if ocpp_version == "2.0":
        name += "_v1p0"
    folder = os.path.join(os.path.dirname(messages.__file__), "v" + ocpp_version.replace(".", ""), "schemas")
    return name, os.path.join(folder, name + ".json")


def _get_validator(message_type_id: int, action: str, ocpp_version: str,
                   parse_float: Callable = float) -> _CompiledValidator:
    name, path = _schema_path(message_type_id, action, ocpp_version)
    key = (name + "_" + ocpp_version, parse_float.__name__)
    validator = _compiled.get(key)
    if validator is None:
        # Missing file → OSError, which the library turns into NotImplemented, as before.
        with open(path, encoding="utf-8-sig") as handle:
            schema = json.loads(handle.read())
        validator = _CompiledValidator(schema, decimal_payloads=parse_float is not float)
        _compiled[key] = validator
    return validator


_original_to_snake = charge_point.camel_to_snake_case
_original_to_camel = charge_point.snake_to_camel_case


@functools.lru_cache(maxsize=4096)
def _snake_key(key: str) -> str:
    return next(iter(_original_to_snake({key: None})))


@functools.lru_cache(maxsize=4096)
def _camel_key(key: str) -> str:
    return next(iter(_original_to_camel({key: None})))


def _convert(data: Any, convert_key: Callable[[str], str]) -> Any:
    if isinstance(data, dict):
        return {convert_key(k): _convert(v, convert_key) for k, v in data.items()}
    if isinstance(data, list):
        return [_convert(v, convert_key) for v in data]
    return data


def camel_to_snake_case(data: Any) -> Any:
    return _convert(data, _snake_key)


def snake_to_camel_case(data: Any) -> Any:
    return _convert(data, _camel_key)


def install() -> None:
    """Make the ``ocpp`` library validate with compiled schemas and memoise key conversion (idempotent)."""
    messages.get_validator = _get_validator
    messages.ASYNC_VALIDATION = False  # inline: executor validation adds latency and breaks virtual time
    charge_point.camel_to_snake_case = camel_to_snake_case
    charge_point.snake_to_camel_case = snake_to_camel_case

