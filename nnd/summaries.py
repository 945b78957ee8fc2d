"""Training summaries: one JSON line per logged step plus TensorBoard scalars.

Both go to the workdir (``metrics.jsonl`` and ``tensorboard/``) and only from
process 0. TensorBoard event files are written with the ``tensorboard``
package's own writer and protos, so no TensorFlow is needed.
"""

from __future__ import annotations

import json
import os
import time

__all__ = ["SummaryWriter"]


class SummaryWriter:
    """Appends records to ``workdir/metrics.jsonl`` and scalars to ``workdir/tensorboard``."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._events = None
        if enabled:
            from tensorboard.summary.writer.event_file_writer import (  # noqa: PLC0415
                EventFileWriter,
            )

            self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, record: dict):
        """Writes ``record`` (numbers, or lists of numbers shown as tag_i) at ``step``."""
        if not self.enabled:
            return
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415

        values = []
        for tag, value in record.items():
            items = value if isinstance(value, (list, tuple)) else [value]
            for i, v in enumerate(items):
                name = tag if len(items) == 1 and not isinstance(value, (list, tuple)) else f"{tag}_{i}"
                values.append(summary_pb2.Summary.Value(tag=name, simple_value=float(v)))
        self._events.add_event(event_pb2.Event(
            wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values)))
        self._events.flush()

    def close(self):
        if self._events is not None:
            self._events.close()
