"""FrameResult: what one processed frame gives, and its JSON payload.

The payload's shape is fixed by `edge_agent/schema/result.schema.json`.
"""
from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from edge_agent.tiling.regions import Regions

SCHEMA_VERSION = 1


@dataclass
class FrameResult:
    camera_id: str
    seq: int
    captured_at: float  # epoch seconds
    width: int
    height: int
    detections: Regions  # frame pixels
    text: Regions  # frame pixels, with quads
    model: dict  # {"name", "variant", ...} from engine.info
    tiles: int = 1
    resplit: list = field(default_factory=list)  # [[x0,y0,x1,y1], ...] tiles that were split
    timings: dict = field(default_factory=dict)  # stage -> seconds
    message_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    zones: dict | None = None  # zone name -> stable counts (edge_agent/shelf.py), when the camera has zones
    prices: list | None = None  # prices read from the text lines (edge_agent/prices.py), when [prices] is on

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.detections.labels).items()))

    def to_payload(self, device_id: str) -> dict:
        d, t = self.detections, self.text
        return {
            "schema_version": SCHEMA_VERSION,
            "message_id": self.message_id,
            "device_id": device_id,
            "camera_id": self.camera_id,
            "seq": self.seq,
            "captured_at": datetime.fromtimestamp(self.captured_at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "frame": {"width": self.width, "height": self.height},
            "model": self.model,
            "tiles": {"count": self.tiles, "resplit": len(self.resplit), "resplit_tiles": [list(map(int, r)) for r in self.resplit]},
            "detections": [
                {"label": lab, "box": [round(float(v), 1) for v in box], "score": round(float(s), 4)}
                for lab, box, s in zip(d.labels, d.boxes, d.scores)
            ],
            "text": [
                {"text": txt, "quad": [round(float(v), 1) for v in quad], "score": round(float(s), 4)}
                for txt, quad, s in zip(t.labels, t.quads if t.quads is not None else [], t.scores)
            ],
            "counts": self.counts(),
            "timings": {k: round(float(v), 4) for k, v in self.timings.items()},
            **({"zones": self.zones} if self.zones is not None else {}),
            **({"prices": self.prices} if self.prices is not None else {}),
        }
