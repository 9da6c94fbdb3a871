"""sweep_fakes' measurements, each call logged as one line ``pid kind key`` to the file named by
``$EXPLORER_FAKE_LOG`` (appends of one short line are atomic), so a test counts every measurement
made by every worker process, killed ones included. ``$EXPLORER_FAKE_DELAY`` slows each encoder down."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import sweep_fakes as F
from explorer.engine.sweep.keys import encoder_key, prefill_key, projector_key


def _log(kind: str, key: str) -> None:
    path = os.environ.get("EXPLORER_FAKE_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {kind} {key}\n".encode())
        finally:
            os.close(fd)


def _stall_once(key: str) -> None:
    """The first encoder measurement of all processes writes ``pid key`` to ``$EXPLORER_FAKE_STALL``
    and hangs (a test SIGKILLs that process mid-measurement); later ones go through."""
    path = os.environ.get("EXPLORER_FAKE_STALL")
    if not path:
        return
    try:
        os.close(os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))  # kept: first one only
    except FileExistsError:
        return
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {key}\n")
    os.rename(path + ".tmp", path)  # complete when it appears
    F._sleep(120)


def measure_encoder(name: str, knobs: dict[str, Any], resolution: int, settings: Any, time: bool = True) -> Any:
    key = encoder_key(name, knobs, resolution)
    _log("encoder", key)  # logged when it starts: a kill comes after
    _stall_once(key)
    return F.measure_encoder(name, knobs, resolution, settings)


def measure_projector(in_channels: int, hidden: int, tokens: int, settings: Any, time: bool = True) -> Any:
    _log("projector", projector_key(in_channels, hidden, tokens))
    return F.measure_projector(in_channels, hidden, tokens, settings)


def measure_prefill(llm: str, tokens: int, settings: Any, time: bool = True) -> Any:
    _log("prefill", prefill_key(F.llm_info(llm)[1], tokens))
    return F.measure_prefill(llm, tokens, settings)


BACKEND = dataclasses.replace(F.BACKEND, measure_encoder=measure_encoder, measure_projector=measure_projector,
                              measure_prefill=measure_prefill)


def read_log(path: Any) -> list[tuple[int, str, str]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(int(p), k, key) for p, k, key in (line.split() for line in f if line.strip())]
