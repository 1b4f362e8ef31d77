"""The prediction log's records, made in a child process: their CPU off the gateway's GIL.

Making a record (digest, predicted labels, lineage fields) and encoding it as
JSON costs about 9 µs of CPU. Done on a thread of the gateway, that time is
taken under the GIL the event loop needs, and the GIL's hand-offs between the
two threads cost the loop more again: at 10,000 requests/s the log took a
quarter of the gateway's throughput (``benchmarks/serve.py --candidate
assurance``). So the writer thread only encodes each chunk of pending items in
one orjson call (about 0.6 µs a record, arrays as nested lists) and sends it
to this process, which rebuilds the arrays with the model's declared
datatypes, makes the records with the same ``RecordMaker`` and sends back the
JSON lines to write and, for the accuracy board, each record's index fields.

The parent writes the lines itself, so what counts as written (and the crash
tally) is unchanged. If this process dies or stops answering, the parent makes
the chunk on its own thread and starts a new one later: nothing is lost.
Configurations reach the child pickled, over the private socket from the
parent that made them (nothing else can write to it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import pickle
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import orjson

from failsoft.data.prediction_options import PredictionLogOptions
from failsoft.data.prediction_record import TRAIL, Pending, RecordMaker
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE

__all__ = ["INDEX_FIELDS", "MakerUnavailable", "RecordMakerProcess", "index_fields"]

log = logging.getLogger("failsoft.predictions")

ANSWER_WITHIN_S = 30.0  # a chunk not made by then: the child is stuck, replaced
RESTART_AFTER_S = 10.0
STOP_WITHIN_S = 2.0  # after a failure, chunks are made in the parent this long
INDEX_FIELDS = (
    "request_id",
    "time",
    "model",
    "version",
    "tenant",
    "status",
    "prediction",
    "kind",
    "segments",
)
_CONFIG = b"C"
_CHUNK = b"B"
_INPUTS, _OUTPUTS, _VERDICT = 11, 12, 16


class MakerUnavailable(Exception):
    """The child could not make this chunk (not started, died, stuck)."""


def index_fields(record: dict[str, Any]) -> dict[str, Any]:
    """What a consumer of the log (the accuracy board) reads of a record."""
    return {name: record[name] for name in INDEX_FIELDS if name in record}


def transferable(item: Pending) -> Pending:
    """``item`` with its input-check verdict (an object) as the text the record shows."""
    verdict = item[_VERDICT]
    if verdict is None or isinstance(verdict, str):
        return item
    from failsoft.data.prediction_record import verdict_text

    return (*item[:_VERDICT], verdict_text(verdict))  # type: ignore[return-value]


class RecordMakerProcess:
    """The parent's handle on the child: ``make(chunk, configs)`` -> (lines, index fields)."""

    def __init__(self, options: PredictionLogOptions) -> None:
        self._options = options.model_dump_json().encode()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._sent: set[int] = set()  # configuration keys the child holds
        self._failed_at = -RESTART_AFTER_S
        self.restarts = 0

    def make(self, chunk: list[Pending], configs: dict[int, Any]) -> tuple[bytes, list[Any]]:
        """The JSON lines of ``chunk`` (newline-terminated) and each record's index fields.

        Raises MakerUnavailable (the caller makes the chunk itself), or
        orjson.JSONEncodeError when an item holds arrays JSON cannot carry.
        """
        keys = {item[7] for item in chunk}
        if not keys <= configs.keys():
            raise MakerUnavailable("a configuration no longer held")  # rare: many revisions
        conn = self._connection()
        payload = orjson.dumps(chunk, option=orjson.OPT_SERIALIZE_NUMPY)
        try:
            for key in keys - self._sent:
                conn.send_bytes(_CONFIG + key.to_bytes(8, "little") + pickle.dumps(configs[key]))
                self._sent.add(key)
            conn.send_bytes(_CHUNK + payload)
            if not conn.poll(ANSWER_WITHIN_S):
                raise TimeoutError(f"no answer within {ANSWER_WITHIN_S:g} s")
            lines = conn.recv_bytes()
            index = orjson.loads(conn.recv_bytes())
        except (OSError, EOFError, TimeoutError) as error:
            self._fail(str(error) or type(error).__name__)
            raise MakerUnavailable(str(error)) from error
        return lines, index

    def _connection(self) -> Connection:
        if self._conn is not None and self._process is not None:
            if self._process.poll() is None:
                return self._conn
            self._fail(f"exited with {self._process.returncode}")
        if time.monotonic() - self._failed_at < RESTART_AFTER_S:
            raise MakerUnavailable("restarting later")
        self._start()
        assert self._conn is not None
        return self._conn

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "failsoft.data.record_maker_process",
                    "--fd",
                    str(theirs.fileno()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=False,
            )
        except OSError as error:
            ours.close()
            self._failed_at = time.monotonic()
            raise MakerUnavailable(f"cannot start: {error}") from error
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._sent = set()
        try:
            self._conn.send_bytes(self._options)
        except OSError as error:
            self._fail(str(error))
            raise MakerUnavailable(str(error)) from error

    def _fail(self, why: str) -> None:
        log.warning(
            "prediction log: the record maker process failed; records are made on the "
            "gateway's thread for now",
            extra={"error": why},
        )
        self._failed_at = time.monotonic()
        self.restarts += 1
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None
        if self._process is not None:
            try:
                self._process.wait(timeout=STOP_WITHIN_S)  # its socket closed: it exits
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


# -- the child ---------------------------------------------------------------------------


class _Rebuilder:
    """Arrays back from nested lists, with the datatypes the model declares."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self._dtypes: dict[str, dict[str, np.dtype[Any]]] = {}

    def dtypes(self, model: str) -> dict[str, np.dtype[Any]]:
        found = self._dtypes.get(model)
        if found is None:
            found = {}
            model_config = self.config.models.get(model) if self.config is not None else None
            if model_config is not None:
                for tensor in [*model_config.inputs, *model_config.outputs]:
                    dtype = DATATYPE_TO_DTYPE.get(tensor.datatype)
                    if dtype is not None:
                        found[tensor.name] = dtype
            self._dtypes[model] = found
        return found

    def item(self, raw: list[Any]) -> Pending:
        dtypes = self.dtypes(raw[3])
        for index in (_INPUTS, _OUTPUTS):
            parts = raw[index]
            if parts is not None:
                raw[index] = tuple(
                    np.asarray(part, dtype=dtypes.get(parts[at - 1])) if at % 2 else part
                    for at, part in enumerate(parts)
                )
        if raw[TRAIL] is not None:
            raw[TRAIL] = list(raw[TRAIL])
        return tuple(raw)


def _serve(conn: Connection) -> None:
    options = PredictionLogOptions.model_validate_json(conn.recv_bytes())
    maker = RecordMaker(options)
    configs: dict[int, _Rebuilder] = {}
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent closed or died
        kind = message[:1]
        if kind == _CONFIG:
            key = int.from_bytes(message[1:9], "little")
            if len(configs) >= 16:
                configs.pop(next(iter(configs)))
            configs[key] = _Rebuilder(pickle.loads(message[9:]))  # our parent, private socket
            continue
        lines: list[bytes] = []
        index: list[dict[str, Any] | None] = []
        for raw in orjson.loads(message[1:]):
            rebuilder = configs.get(raw[7]) or _Rebuilder(None)
            try:
                record = maker.make(rebuilder.item(raw), rebuilder.config)
                lines.append(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY))
            except Exception:
                index.append(None)  # the parent counts it as a bad record
                continue
            index.append(index_fields(record))
        conn.send_bytes(b"\n".join(lines) + b"\n" if lines else b"")
        conn.send_bytes(orjson.dumps(index))


def main() -> None:
    parser = argparse.ArgumentParser(description="failsoft record maker (started by the gateway)")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args()
    # No death signal: it would come when the writer thread that started this process
    # ends, before the log's last records. When the gateway dies, its end of the socket
    # closes and this process, reading EOF, exits.
    # Ctrl-C and a SIGTERM to the gateway's process group are the gateway's to handle: it
    # still sends its last records here while it stops, then closes the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _serve(Connection(args.fd))


if __name__ == "__main__":
    main()
