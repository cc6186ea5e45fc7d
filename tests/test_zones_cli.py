"""`edge-agent zones IMAGE --config FILE --draw OUT.jpg` on the bundled sample with the zones
example, zones on `tiles --draw`, and bad polygons: one line naming the zone, exit 2, in the
CLI and in the agent."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.agent import Agent, RunLimits
from edge_agent.cli import exit_status
from edge_agent.errors import ConfigError
from edge_agent.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "fixtures" / "sample" / "shelf.jpg"
EXAMPLE = REPO / "config" / "examples" / "zones-sample.toml"


def edge_agent(*args, cwd=REPO) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "edge-agent"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_agent"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_zones_preview_of_the_sample(tmp_path):
    out = tmp_path / "zones.jpg"
    p = edge_agent("zones", SAMPLE, "--config", EXAMPLE, "--draw", out)
    assert p.returncode == 0, p.stderr
    assert "3 zone(s)" in p.stdout and "top-shelf" in p.stdout and "bottom-shelf: 0,480 1280,480" in p.stdout
    drawn, plain = cv2.imread(str(out)), cv2.imread(str(SAMPLE))
    assert drawn.shape == plain.shape and np.abs(drawn.astype(int) - plain).mean() > 1.0  # something was drawn
    p = edge_agent("zones", SAMPLE, "--config", EXAMPLE, "--json")
    zones = json.loads(p.stdout)["zones"]
    assert [z["name"] for z in zones] == ["top-shelf", "middle-shelf", "bottom-shelf"]
    assert zones[0]["points"][2] == [1280.0, 240.5]  # normalised points in frame pixels


def test_tiles_draw_shows_the_zones(tmp_path):
    with_zones, without = tmp_path / "a.png", tmp_path / "b.png"
    assert edge_agent("tiles", SAMPLE, "--config", EXAMPLE, "--draw", with_zones).returncode == 0
    assert edge_agent("tiles", SAMPLE, "--draw", without).returncode == 0
    assert np.abs(cv2.imread(str(with_zones)).astype(int) - cv2.imread(str(without))).sum() > 0


BAD = {
    "crossing": ("points = [[0, 0], [100, 100], [100, 0], [0, 100]]", "zone 'aisle-3': the polygon crosses itself"),
    "two points": ("points = [[0, 0], [100, 100]]", "zone 'aisle-3': a polygon needs at least 3 points, got 2"),
    "outside": ("points = [[0, 0], [5000, 0], [0, 100]]", "zone 'aisle-3': point (5000, 0) is outside the 1280x720 frame"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_polygon_is_one_line_naming_the_zone(tmp_path, case):
    points, message = BAD[case]
    config = tmp_path / "zones.toml"
    config.write_text(f'[camera]\nsource = "x.mp4"\n\n[[zones]]\nname = "aisle-3"\n{points}\n')
    p = edge_agent("zones", SAMPLE, "--config", config, "--draw", tmp_path / "out.jpg")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert message in p.stderr and str(config) in p.stderr
    assert not (tmp_path / "out.jpg").exists()


def test_agent_stops_with_a_config_error_on_a_zone_outside_the_frame(tmp_path):
    config = tmp_path / "zones.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path}/state"\ninterval = 0.0\n[camera]\nsource = "{SAMPLE}"\n'
                      '[[zones]]\nname = "wide"\npoints = [[0, 0], [5000, 0], [0, 100]]\n')

    class Nothing:
        info = {"name": "scripted", "variant": ""}

        def run(self, crops, tasks=("od", "ocr")):
            from edge_agent.models.outputs import TaskOutput
            from edge_agent.tiling.regions import Regions

            empty = Regions(np.zeros((0, 4)), np.zeros(0), ())
            text = Regions.from_quads(np.zeros((0, 8)), np.zeros(0), ())
            return [{"od": TaskOutput("od", empty, False, "", ()), "ocr": TaskOutput("ocr", text, False, "", ())}
                    for _ in crops]

    agent = Agent(load_settings(config, env={}), RunLimits(max_frames=1, drain_timeout=1), engine=Nothing())
    with pytest.raises(ConfigError, match=r"zone 'wide': point \(5000, 0\) is outside the 1280x720 frame") as e:
        agent.run(install_signals=False)
    assert exit_status(e.value) == 2


def test_a_zone_name_twice_for_one_camera_is_a_config_error(tmp_path, caplog):
    config = tmp_path / "zones.toml"
    zone = '[[zones]]\nname = "top"\npoints = [[0, 0], [1, 0], [0, 1]]\n'
    config.write_text('[camera]\nid = "cam0"\nsource = "x.mp4"\n' + zone + zone)
    with pytest.raises(ConfigError, match=r"\[\[zones\]\] name 'top': defined twice for camera 'cam0'") as e:
        load_settings(config, env={})
    assert exit_status(e.value) == 2
    config.write_text('[camera]\nid = "cam0"\nsource = "x.mp4"\n' + zone + zone.replace('"top"', '"door"') + 'camera = "cam9"\n')
    assert [z.name for z in load_settings(config, env={}).zones] == ["top", "door"]
    assert "'door' is for camera 'cam9', which is not configured (cameras: cam0)" in caplog.text
