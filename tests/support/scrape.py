"""Reading a host's metrics and health in tests, through prometheus_client's
own parser, and a metrics-publishing stack of real processes."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from support.procs import DIRECT_BIND, EXAMPLE, Proc, child_env, free_frontend, free_port, seen_workers

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str, timeout: float = 5.0) -> Samples:
    """Every sample of ``http://address/metrics``: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def label_values(samples: Samples, name: str, label: str) -> list[str]:
    """The values of ``label`` over ``name``'s samples, sorted, repeats kept."""
    return sorted(dict(ls)[label] for (n, ls), _ in samples.items() if n == name and label in dict(ls))


def health(address: str, timeout: float = 5.0) -> tuple[int, dict]:
    """(HTTP status, JSON report) of ``/healthz``."""
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class MeteredStack:
    """A broker and workers publishing into ``folder``, and rokv-metrics serving it."""

    def __init__(self, log_dir: Path, workers: int = 2, *, direct: bool = False, pure_python: bool = False) -> None:
        self.folder = log_dir / "metrics"
        env = child_env(PROMETHEUS_MULTIPROC_DIR=str(self.folder))
        worker_env = {**env, "ROKV_PURE_PYTHON": "1"} if pure_python else env
        self.frontend = free_frontend()
        backend = f"tcp://127.0.0.1:{free_port()}"
        self.address = f"127.0.0.1:{free_port()}"
        self.exporter = Proc(
            "exporter",
            [sys.executable, "-m", "rokv.ops.exporter", "--listen", self.address, "--dir", str(self.folder)],
            log_dir,
            env,
        )
        self.broker = Proc(
            "broker",
            [sys.executable, "-m", "rokv.broker", "--frontend", self.frontend, "--backend", backend],
            log_dir,
            env,
        )
        self.workers = [
            Proc(
                f"worker_{i:02d}",
                [
                    sys.executable,
                    "-m",
                    "rokv.worker",
                    "--backend",
                    backend,
                    "--data",
                    str(EXAMPLE),
                    "--name",
                    f"worker_{i:02d}",
                    *(DIRECT_BIND if direct else ()),
                ],
                log_dir,
                worker_env,
            )
            for i in range(workers)
        ]

    def wait_ready(self) -> MeteredStack:
        seen_workers(self.frontend, len(self.workers))
        return self

    def stop(self) -> None:
        for proc in [*self.workers, self.broker, self.exporter]:
            proc.stop()
