"""Shared pytest fixtures: a real MQTT broker on a free port, the result schema.

The report header says which broker runs the MQTT tests (mosquitto, or amqtt where the
mosquitto binary is absent)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import broker as broker_mod

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "edge_agent" / "schema" / "result.schema.json"


def pytest_report_header(config):
    return f"mqtt broker for tests: {broker_mod.describe_broker()}"


def pytest_terminal_summary(terminalreporter):
    """Also at the end, where `pytest -q` (which hides the header) still shows it."""
    terminalreporter.write_line(f"mqtt broker for tests: {broker_mod.describe_broker()}")


@pytest.fixture(autouse=True)
def _package_loggers_restored():
    """setup_logging (which CLI tests run in-process) stops the package loggers' propagation and
    sets their level; undo that after each test, so that caplog sees their records."""
    from edge_agent.logs import package_loggers

    yield
    for name in package_loggers():
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if getattr(h, "_edge_agent", False)]:
            logger.removeHandler(h)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


@pytest.fixture
def broker(tmp_path):
    """A running plain broker (mosquitto, or amqtt); `broker.stop()`/`start()` keep the port."""
    b = broker_mod.Broker(tmp_path / "broker")
    print(f"broker: {b.kind} on {b.url}")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    return broker_mod.make_test_ca(tmp_path_factory.mktemp("tls"))


class SchemaChecker:
    def __init__(self, schema: dict):
        import jsonschema

        self.schema = schema
        cls = jsonschema.Draft202012Validator
        self.result = cls(schema, format_checker=cls.FORMAT_CHECKER)
        self._defs = {name: cls({"$defs": schema["$defs"], "$ref": f"#/$defs/{name}"}, format_checker=cls.FORMAT_CHECKER)
                      for name in schema["$defs"]}

    def check(self, payload, kind: str = "result") -> dict:
        """Validate a result (or a $defs message: counts_message, status_message, stats_message)."""
        if isinstance(payload, (bytes, bytearray, str)):
            payload = json.loads(payload)
        (self.result if kind == "result" else self._defs[kind]).validate(payload)
        return payload


@pytest.fixture(scope="session")
def schema():
    return SchemaChecker(json.loads(SCHEMA_PATH.read_text()))
