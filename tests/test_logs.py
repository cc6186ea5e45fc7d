"""edge_agent.logs: one handler for edge_agent's and the library packages' loggers, journald
priority prefixes under systemd."""
from __future__ import annotations

import io
import logging

import edge_agent.models.generation  # noqa: F401
from edge_agent import models
import edge_agent.tiling.runner  # noqa: F401
from edge_agent import tiling
from edge_agent.logs import package_loggers, setup_logging
from edge_agent.models.generation import GenerationSettings


def test_models_warning_reaches_the_handler_with_the_journald_prefix(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    out = io.StringIO()
    setup_logging("info", stream=out)
    GenerationSettings.from_dict({"do_sample": True, "num_beams": 2}, "gen.json")  # models/ warns: not supported
    assert out.getvalue().splitlines() == [
        f"<4>{models.generation.__name__}: gen.json: do_sample=true ignored; "
        "the engine decodes greedily or with beam search"]


def test_library_info_lines_are_kept_and_the_level_applies(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    setup_logging("info", stream=out)
    logging.getLogger(tiling.runner.__name__).info("tiles planned")
    logging.getLogger(models.generation.__name__).debug("not at info")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"INFO    {tiling.runner.__name__}: tiles planned")
    setup_logging("warning", stream=out)  # again: the handler is replaced, not added
    logging.getLogger(models.generation.__name__).warning("once")
    assert out.getvalue().count("once") == 1


def test_package_loggers_inside_the_edge_agent_namespace():
    inside = models.__name__.startswith("edge_agent.")  # after scripts/rename_packages.py
    assert package_loggers() == (("edge_agent",) if inside else ("edge_agent", models.__name__, tiling.__name__))
    # after a move into edge_agent's namespace their records reach edge_agent's handler, once
    assert package_loggers(("edge_agent", "edge_agent.models", "edge_agent.tiling")) == ("edge_agent",)
