"""Training curves as TensorBoard event files in the run folder (``tensorboard --logdir runs/``).

    curves = Curves(run_dir)                     # rank 0 only; None-safe no-op elsewhere
    curves.scalars(step, {"train/loss": 0.52, "train/samples_per_s": 21000.0})
    curves.close()
    read_scalars(run_dir / "tensorboard")        # {"train/loss": [(step, value), ...], ...}

Written with tensorboardX (no TensorFlow); :func:`read_scalars` reads the files back with
tensorboardX's protobufs (TFRecord framing: length, its CRC, the event, its CRC) so tests and
tools need not install TensorBoard.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

SUBDIR = "tensorboard"


class Curves:
    """Scalars of one run, written to ``<run_dir>/tensorboard/events.out.tfevents.*``.

    Args:
        run_dir: the run folder (``recsys train``'s ``run_dir``).
        enabled: False on every rank but 0, so one process writes (the others' calls do nothing).
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True) -> None:
        self.logdir = Path(run_dir) / SUBDIR
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.logdir.mkdir(parents=True, exist_ok=True)
            # flush_secs: a run someone is watching in TensorBoard shows its curve within ~10 s.
            self._writer = SummaryWriter(logdir=str(self.logdir), flush_secs=10)

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        """One point per finite number of ``values`` (non-numbers and NaN are skipped). TensorBoard
        tags allow ``[A-Za-z0-9_./-]``: tensorboardX writes ``recall@20`` as ``recall_20``."""
        if self._writer is None:
            return
        for tag, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self._writer.add_scalar(tag, float(value), global_step=step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``logdir``: ``{tag: [(step, value), ...]}`` in file order."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            start = pos + 12  # length (8) + its CRC (4)
            event = Event.FromString(data[start : start + length])
            pos = start + length + 4  # + the event's CRC
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out
