"""Summaries: one JSON line per logged step, and TensorBoard scalars and images.

Training writes ``WORKDIR/metrics.jsonl`` and TensorBoard events in
``WORKDIR/tensorboard``; evaluation writes its metrics and pictures as events in
``WORKDIR/tensorboard/eval`` (a run of its own, at the checkpoint's step). Only
process 0 writes. Events are TFRecords of ``tensorboard``'s own protos, framed by its
``RecordWriter`` and written through :mod:`nnd.paths`, so a ``gs://`` workdir gets
them in the bucket and no TensorFlow is needed.

A resumed run first calls :func:`drop_after` with the restored step: records of
later steps (written before a crash, or before the newest checkpoint proved
unreadable) are removed from ``metrics.jsonl`` and from the training event files,
so every reader sees each step once, with the values of the run that continues.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import socket
import struct
import time

from nnd import paths

__all__ = ["Events", "SummaryWriter", "flatten", "drop_after"]


_WRITERS = itertools.count()  # event files of this process: never two writers on one file


def _png_size(png: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk."""
    width, height = struct.unpack(">II", png[16:24])
    return height, width


class Events:
    """A TensorBoard event file in ``logdir`` (one per writer), appended through :mod:`nnd.paths`."""

    def __init__(self, logdir: str):
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_WRITERS)}")
        self.path = paths.get(logdir) / name
        self._started = False

    def _write(self, step: int, values: list) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415
        from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: PLC0415

        buffer = io.BytesIO()
        records = RecordWriter(buffer)
        if not self._started:
            records.write(event_pb2.Event(wall_time=time.time(),
                                          file_version="brain.Event:2").SerializeToString())
        records.write(event_pb2.Event(wall_time=time.time(), step=step,
                                      summary=summary_pb2.Summary(value=values)).SerializeToString())
        paths.append(self.path, buffer.getvalue())
        self._started = True

    def scalars(self, step: int, scalars: dict) -> None:
        """Writes ``{tag: number}`` at ``step``."""
        from tensorboard.compat.proto import summary_pb2  # noqa: PLC0415

        self._write(step, [summary_pb2.Summary.Value(tag=tag, simple_value=float(v))
                           for tag, v in scalars.items()])

    def images(self, step: int, images: dict) -> None:
        """Writes ``{tag: PNG bytes}`` at ``step``."""
        from tensorboard.compat.proto import summary_pb2  # noqa: PLC0415

        values = []
        for tag, png in images.items():
            height, width = _png_size(png)
            values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
                height=height, width=width, colorspace=4, encoded_image_string=png)))
        self._write(step, values)


def flatten(record: dict, prefix: str = "") -> dict:
    """``{tag: float}`` of the numbers in a nested record: dicts joined by "/", lists as tag_i.

    Strings, None and booleans are left out.
    """
    out = {}
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, tag + "/"))
        elif isinstance(value, (list, tuple)):
            out.update({f"{tag}_{i}": float(v) for i, v in enumerate(value)
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


class SummaryWriter:
    """Appends records to ``workdir/metrics.jsonl`` and events to ``workdir/tensorboard``."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.jsonl_path = paths.get(workdir) / "metrics.jsonl"
        self.events = Events(str(paths.get(workdir) / "tensorboard")) if enabled else None

    def write(self, step: int, record: dict):
        """Writes ``record`` (numbers, or lists of numbers shown as tag_i) at ``step``."""
        if not self.enabled:
            return
        paths.append(self.jsonl_path, json.dumps({"step": step, **record}) + "\n")
        self.events.scalars(step, flatten(record))

    def images(self, step: int, images: dict):
        """Writes ``{tag: PNG bytes}`` to TensorBoard at ``step``."""
        if self.enabled:
            self.events.images(step, images)


def _records(data: bytes):
    """The TFRecords of an event file as (step, raw bytes) pairs; a torn last record is dropped.

    A record is ``length (uint64) | crc(length) | payload | crc(payload)``; the raw
    bytes are kept as read, so the CRCs stay valid.
    """
    from tensorboard.compat.proto import event_pb2  # noqa: PLC0415

    out, at = [], 0
    while at + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        end = at + 12 + length + 4
        if end > len(data):
            break
        try:
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
        except Exception:  # noqa: BLE001  (a corrupt record ends what can be read)
            break
        out.append((event.step, data[at:end]))
        at = end
    return out


def drop_after(workdir: str, step: int) -> int:
    """Removes the records of steps after ``step`` from the run's ``metrics.jsonl`` and events.

    Called when training resumes from the checkpoint of ``step`` (0 for a fresh
    start): the dropped steps are trained again and written anew. Lines of
    ``metrics.jsonl`` that do not parse (a write cut short) go too. Event files in
    ``workdir/tensorboard`` (not ``eval/``, whose steps are checkpoints) are
    rewritten with the records of steps <= ``step``; one left with nothing but its
    header is deleted. Files are replaced whole (:func:`nnd.paths.write`). Returns
    the number of records dropped (logged when not 0).
    """
    root = paths.get(workdir)
    dropped = 0
    jsonl = root / "metrics.jsonl"
    if jsonl.exists():
        lines = jsonl.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                keep = int(json.loads(line)["step"]) <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            dropped += len(lines) - len(kept)
            paths.write(jsonl, "".join(kept))
    logdir = root / "tensorboard"
    if logdir.is_dir():
        for path in sorted(logdir.glob("events.out.tfevents.*")):
            data = path.read_bytes()
            records = _records(data)
            kept = [raw for s, raw in records if s <= step]
            if len(kept) == len(records) and sum(map(len, kept)) == len(data):
                continue
            dropped += len(records) - len(kept)
            if len(kept) <= 1:  # at most the file_version header: nothing left to show
                path.unlink()
            else:
                paths.write(path, b"".join(kept))
    if dropped:
        logging.info("resuming from step %d: dropped %d records of later steps from %s and %s",
                     step, dropped, jsonl, logdir)
    return dropped
