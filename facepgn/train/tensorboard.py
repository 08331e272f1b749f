"""TensorBoard: the one writer (both loops) and the one reader (tests, benchmarks, the demo).

Events go to ``<output_dir>/tensorboard``; with a remote (``s3://``) output_dir they are written to
a local folder and copied there on :meth:`Tensorboard.sync`.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import tempfile
from typing import Any

from facepgn import storage

log = logging.getLogger("facepgn.train")

TENSORBOARD_DIR = "tensorboard"


class Tensorboard:
    """A TensorBoard event writer for ``<output_dir>/tensorboard``; does nothing when not
    ``enabled`` (the other Ray workers, ``tensorboard: false``) or without tensorboardX.
    ``purge_step``: a resumed run drops the events its earlier part wrote after that step."""

    def __init__(self, output_dir: str, enabled: bool, purge_step: int | None = None):
        self.remote_dir = storage.join(output_dir, TENSORBOARD_DIR)
        self.writer = None
        if not enabled:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            log.warning("tensorboardX not installed: no TensorBoard events")
            return
        if storage.is_remote(output_dir):
            self.local_dir = tempfile.mkdtemp(prefix="facepgn-tb-")
        else:
            self.local_dir = self.remote_dir
            os.makedirs(self.local_dir, exist_ok=True)
        self.writer = SummaryWriter(logdir=self.local_dir, purge_step=purge_step, flush_secs=10)

    def scalars(self, values: dict[str, Any], step: int) -> None:
        """Every finite number of ``values`` under its key (others are left out)."""
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def image(self, tag: str, rgb, step: int) -> None:
        """An RGB uint8 (H, W, 3) image."""
        if self.writer is not None:
            self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def sync(self) -> None:
        """Flush; copy the event files to a remote output_dir."""
        if self.writer is None:
            return
        self.writer.flush()
        if self.local_dir != self.remote_dir:
            for name in os.listdir(self.local_dir):
                storage.atomic_write_file(os.path.join(self.local_dir, name), storage.join(self.remote_dir, name))

    def close(self) -> None:
        if self.writer is not None:
            self.sync()
            self.writer.close()
            self.writer = None


def read_tensorboard(log_dir: str) -> dict[str, Any]:
    """Scalars and images from the TensorBoard event files in ``log_dir`` (local), without TensorBoard:
    ``{"scalars": {tag: [(step, value), ...]}, "images": {tag: [(step, png bytes), ...]}}``, each
    series in step order. A missing folder (or tensorboardX) reads as no events."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    images: dict[str, list[tuple[int, bytes]]] = {}
    try:
        from tensorboardX.proto import event_pb2
    except ImportError:  # pragma: no cover - tensorboardX is a dependency
        return {"scalars": scalars, "images": images}
    names = sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []
    for name in names:
        if "tfevents" not in name:
            continue
        with open(os.path.join(log_dir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            start = pos + 12  # length (8) + its crc (4)
            if start + length + 4 > len(data):
                break  # a record still being written
            event = event_pb2.Event.FromString(data[start : start + length])
            pos = start + length + 4
            for value in event.summary.value:
                if value.HasField("image"):
                    images.setdefault(value.tag, []).append((int(event.step), value.image.encoded_image_string))
                elif value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    for series in (*scalars.values(), *images.values()):
        series.sort(key=lambda point: point[0])
    return {"scalars": scalars, "images": images}
