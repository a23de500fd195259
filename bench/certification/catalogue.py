"""The certification catalogue: short cases on one site, each exercising named checks.

A catalogue is a folder: ``site.toml`` — a scenario without vehicles, the one installation a controller under
test is configured for — and one TOML file per case. A case file has a ``[certify]`` table::

    [certify]
    exercises = ["SITE-LIMIT", "REALLOCATE"]     # check ids this case puts to the test
    extends = { REALLOCATE = "errata §2.46" }    # the OCPP certification case (TC_K_…) a check extends here
    ocpp = "2.0.1"                               # optional: the case needs stations of this version
    grid_signal = true                           # optional: the case signals a grid limit (in-process only)

and a ``[scenario]`` table merged over the site (tables merge key by key, arrays replace): vehicles, events,
clock, checks. Everything is validated on load; a mistake is a :class:`~bench.scenario.ScenarioError` naming the
file and the field. The bundled catalogue is ``fixtures/certification/``; a user's own folder works the same
way (without a ``site.toml`` its cases use the bundled site).

Nothing here runs anything: :mod:`bench.certification.session` does.
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.checks import CHECKS
from bench.checks.core import CHECK_INFO
from bench.scenario import Scenario, ScenarioError, parse_scenario

_CERTIFY_KEYS = {"exercises", "extends", "ocpp", "grid_signal"}


@dataclass(frozen=True)
class Case:
    """One certification case: a scenario on the certification site and the checks it exercises."""

    id: str
    description: str
    exercises: tuple[str, ...]
    scenario: Scenario
    source: Path
    extends: dict[str, str] = field(default_factory=dict)
    ocpp: str | None = None  # the version every station must speak for this case, if any
    grid_signal: bool = False  # signals a grid limit, which only an in-process controller can be told

    def test_id(self, check_id: str) -> str:
        """The name a test of ``check_id`` on this case gets: ``REALLOCATE-errata_2.46-load-balancing`` (ASCII, no
        spaces, so that ``-k`` can name it and pytest does not escape it)."""
        extends = self.extends.get(check_id)
        return f"{check_id}-{_ascii(extends)}-{self.id}" if extends else f"{check_id}-{self.id}"

    def layer(self, check_id: str) -> str:
        return CHECK_INFO[check_id].layer

    def versions(self) -> set[str]:
        return {station.ocpp for station in self.scenario.stations}

    def skip_reason(self, *, external: bool, ocpp: str | None) -> str | None:
        """Why this case cannot run against this controller, or None."""
        if self.grid_signal and external:
            return ("signals a grid limit, and OCPP has no message to tell a CSMS one: run this case with an "
                    "in-process controller")
        if self.ocpp is not None and ocpp is not None and ocpp != self.ocpp:
            return f"needs OCPP {self.ocpp} stations (the run was asked for {ocpp})"
        return None

    def scenario_for(self, *, ocpp: str | None = None, meter_port: int | None = None) -> Scenario:
        """The case's scenario with every station on ``ocpp`` and the site meter on ``meter_port`` if given."""
        data = self.scenario.model_dump(by_alias=False)
        if ocpp is not None:
            for station in data["stations"]:
                station["ocpp"] = ocpp
        if meter_port is not None:
            data["site"]["meter"]["port"] = meter_port
        return Scenario.model_validate(data)


def _ascii(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_")


def bundled_catalogue_dir() -> Path:
    return Path(str(importlib.resources.files("fixtures") / "certification"))


def load_catalogue(folder: str | Path | None = None) -> list[Case]:
    """Every case in ``folder`` (default: the bundled catalogue), sorted by file name."""
    folder = Path(folder) if folder is not None else bundled_catalogue_dir()
    if not folder.is_dir():
        raise ScenarioError("expected a folder of certification cases", file=folder)
    site_path = folder / "site.toml"
    if not site_path.exists():
        site_path = bundled_catalogue_dir() / "site.toml"
    site = _read_toml(site_path)
    cases = [load_case(path, site) for path in sorted(folder.glob("*.toml")) if path.name != "site.toml"]
    if not cases:
        raise ScenarioError("no case files (*.toml besides site.toml) in this folder", file=folder)
    return cases


def load_case(path: Path, site: dict[str, Any]) -> Case:
    """One case file over the parsed ``site``."""
    data = _read_toml(path)
    unknown = sorted(set(data) - {"description", "certify", "scenario"})
    if unknown:
        raise ScenarioError("unknown key; a case file has description, [certify] and [scenario]", file=path,
                            field=unknown[0])
    certify = data.get("certify")
    if not isinstance(certify, dict):
        raise ScenarioError("expected a [certify] table naming the checks the case exercises", file=path,
                            field="certify")
    for key in sorted(set(certify) - _CERTIFY_KEYS):
        raise ScenarioError(f"unknown key; expected one of {', '.join(sorted(_CERTIFY_KEYS))}", file=path,
                            field=f"certify.{key}")
    exercises = certify.get("exercises")
    if not isinstance(exercises, list) or not exercises or not all(isinstance(x, str) for x in exercises):
        raise ScenarioError("expected a non-empty array of check ids", file=path, field="certify.exercises")
    for i, check_id in enumerate(exercises):
        if check_id not in CHECKS:
            raise ScenarioError(f"unknown check {check_id!r}; known: {', '.join(CHECKS)}", file=path,
                                field=f"certify.exercises[{i}]")
    extends = certify.get("extends", {})
    if not isinstance(extends, dict) or not all(isinstance(v, str) and v for v in extends.values()):
        raise ScenarioError('expected a table of check id = "certification case"', file=path,
                            field="certify.extends")
    for check_id in extends:
        if check_id not in exercises:
            raise ScenarioError("names a check the case does not exercise", file=path,
                                field=f"certify.extends.{check_id}")
    ocpp = certify.get("ocpp")
    if ocpp not in (None, "1.6", "2.0.1"):
        raise ScenarioError(f'expected "1.6" or "2.0.1" (got {ocpp!r})', file=path, field="certify.ocpp")
    grid_signal = certify.get("grid_signal", False)
    if not isinstance(grid_signal, bool):
        raise ScenarioError(f"expected true or false (got {grid_signal!r})", file=path, field="certify.grid_signal")
    part = data.get("scenario", {})
    if not isinstance(part, dict):
        raise ScenarioError("expected a [scenario] table", file=path, field="scenario")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError("expected a string", file=path, field="description")
    merged = _merge(site, part)
    merged["name"] = f"certification/{path.stem}"
    merged["description"] = description or merged.get("description", "")
    scenario = parse_scenario(merged, path)
    if ocpp is not None:
        wrong = [s.id for s in scenario.stations if s.ocpp != ocpp
                 and any(v.station == s.id for v in scenario.vehicles)]
        if wrong:
            raise ScenarioError(f"the case needs OCPP {ocpp} but its cars plug into {', '.join(wrong)}", file=path,
                                field="certify.ocpp")
    return Case(path.stem, description, tuple(exercises), scenario, path, dict(extends), ocpp, grid_signal)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ScenarioError(f"cannot read: {error.strerror or error}", file=path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ScenarioError(f"not valid TOML: {error}", file=path) from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``: tables merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
