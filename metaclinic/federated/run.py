"""A whole federation on one machine, and the meta-test of its global model on the held-out site.

The server and one Flower client per site talk over gRPC on a loopback port, exactly as on separate
machines (the clients run in threads of this process instead of processes of their own; Flower's
simulation engine would need Ray). Afterwards the global model is meta-tested on the held-out site through
the same report code as ``fit``, beside the no-learning baselines and the logistic regression of every
site's patients pooled: the bar that federation, which never pools, is measured against.

A run directory ``<runs_dir>/<name>/<timestamp>/`` holds ``federation.yaml`` (the settings),
``federation.log`` (the server's and the sites' log lines), ``rounds.json`` (per round: which sites trained,
sat out or failed, tasks, mean training loss and accuracy), ``global_model.ckpt`` (the global weights and
feature encoding: tensors, numbers and strings only), ``meta_test_report.json`` and ``baselines.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from flwr.client import start_client
from lightning.pytorch import Trainer

from metaclinic.baselines.logistic import PooledLogisticRegression
from metaclinic.baselines.no_learning import no_learning_baselines
from metaclinic.cli import new_run_directory, publish_report, score_meta_test
from metaclinic.compare import Run, publish_beside_baselines, reference_runs
from metaclinic.data.preprocess import TablePreprocessor
from metaclinic.evaluation.report import REPORT_FILE, MetaTestReport
from metaclinic.experiment.storage import write_atomically
from metaclinic.federated.build import build_model_and_data
from metaclinic.federated.client import SiteClient
from metaclinic.federated.config import FederatedConfig
from metaclinic.federated.server import Federation, serve

log = logging.getLogger("metaclinic")

LOG_FILE, ROUNDS_FILE, MODEL_FILE, SETTINGS_FILE = (
    "federation.log",
    "rounds.json",
    "global_model.ckpt",
    "federation.yaml",
)
POOLED = "PooledLogisticRegression (every site pooled)"


@dataclass
class FederatedRun:
    """A finished one-machine federation: its directory, global model, report, and the sites that failed."""

    run_dir: Path
    federation: Federation
    report: MetaTestReport | None
    failed_sites: dict[str, BaseException]


def run_on_one_machine(
    config: FederatedConfig,
    runs_dir: str | Path = "runs",
    run_name: str | None = None,
    client_factory: Callable[[FederatedConfig, str], SiteClient] = SiteClient,
    meta_test: bool = True,
) -> FederatedRun:
    """The server and every site on loopback gRPC, then the meta-test; ``client_factory`` makes each site."""
    run_dir = new_run_directory(Path(runs_dir) / (run_name or config.name))
    settings = {
        "fit_config": str(config.fit_config),
        "overrides": config.overrides,
        "federation": dataclasses.asdict(config.federation),
    }
    write_atomically(run_dir / SETTINGS_FILE, yaml.safe_dump(settings, sort_keys=False))
    address = f"127.0.0.1:{free_port()}"
    failed: dict[str, BaseException] = {}
    with logged_to(run_dir / LOG_FILE):
        threads = [
            threading.Thread(
                target=run_site, args=(client_factory(config, site), address, config, failed), daemon=True,
                name=f"site-{site}",
            )
            for site in config.federation.site_names
        ]  # fmt: skip
        federation = serve(config, address, on_listening=lambda: [thread.start() for thread in threads])
        for thread in threads:
            thread.join(timeout=30)
        write_outcome(run_dir, federation)
        report = (
            meta_test_global_model(federation, run_dir, config.federation.accelerator) if meta_test else None
        )
    return FederatedRun(run_dir, federation, report, failed)


def run_site(
    client: SiteClient, address: str, config: FederatedConfig, failed: dict[str, BaseException]
) -> None:
    """One site's Flower client until the server says the federation is over (or it crashes)."""
    try:
        start_client(
            server_address=address, client=client.to_client(), max_wait_time=config.federation.client_max_wait
        )
    except Exception as error:  # a crashed site: the server counts it as a failure of its round
        failed[client.site] = error
        log.warning("site %s stopped: %s: %s", client.site, type(error).__name__, error)


def write_outcome(run_dir: Path, federation: Federation) -> None:
    """``rounds.json`` and ``global_model.ckpt`` (weights and feature encoding; loads with weights_only)."""
    write_atomically(run_dir / ROUNDS_FILE, json.dumps(federation.rounds, indent=1) + "\n")
    state = {
        "state_dict": federation.model.state_dict(),
        "algorithm": type(federation.model).__name__,
        "preprocessor": federation.preprocessor.state_dict() if federation.preprocessor else None,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomically(run_dir / MODEL_FILE, buffer.getvalue())


def meta_test_global_model(federation: Federation, run_dir: Path, accelerator: str = "cpu") -> MetaTestReport:
    """The global model's meta-test report beside the no-learning and pooled baselines (same episodes)."""
    model, data = federation.model, federation.data
    model.reference_methods = [m for m in no_learning_baselines() if type(m) is not type(model)]
    trainer = evaluation_trainer(accelerator)
    report = score_meta_test(trainer, model, data, None, run_dir)
    report.extra["federated"] = {
        "rounds": len(federation.rounds),
        "sites": sorted({s for r in federation.rounds for s in r["sites"]}),
    }
    publish_report(report, trainer, run_dir / REPORT_FILE)
    pooled = score_meta_test(evaluation_trainer(accelerator), PooledLogisticRegression(), data, None, run_dir)
    pooled.extra["baseline"] = True
    pooled.write(run_dir / "pooled" / REPORT_FILE)
    federated = Run.read(run_dir / REPORT_FILE)
    federated.name = f"{federated.report['algorithm']} (federated)"
    beside = [*reference_runs(federated.report), Run(POOLED, pooled.to_dict())]
    publish_beside_baselines([federated, *beside], run_dir)
    return report


def meta_test_checkpoint(config: FederatedConfig, ckpt_path: str | Path, run_dir: Path) -> MetaTestReport:
    """The held-out site's own meta-test of ``global_model.ckpt``: it reads only its own data.

    The episodes are those of the one-machine run's meta-test (they are drawn within the held-out site's
    classes, whatever else the run read), so the per-episode results are the same; the pooled baseline
    needs the other sites' patients and is not scored here.
    """
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # tensors and plain data only
    encoding = state.get("preprocessor")
    preprocessor = TablePreprocessor.from_state_dict(encoding) if encoding else None
    model, data = build_model_and_data(config.held_out_args(), preprocessor)
    model.load_state_dict(state["state_dict"])
    model.reference_methods = [m for m in no_learning_baselines() if type(m) is not type(model)]
    trainer = evaluation_trainer(config.federation.accelerator)
    report = score_meta_test(trainer, model, data, None, run_dir)
    publish_report(report, trainer, run_dir / REPORT_FILE)
    federated = Run.read(run_dir / REPORT_FILE)
    federated.name = f"{federated.report['algorithm']} (federated)"
    publish_beside_baselines([federated, *reference_runs(federated.report)], run_dir)
    return report


def evaluation_trainer(accelerator: str) -> Trainer:
    """A Trainer for the meta-test: nothing logged or checkpointed; gradients on for inner loops (MAML)."""
    return Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
        use_distributed_sampler=False,
    )  # fmt: skip


@contextlib.contextmanager
def logged_to(path: Path) -> Iterator[None]:
    """Copies metaclinic's and Flower's log lines into ``path`` while the block runs."""
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(threadName)s: %(message)s"))
    loggers = [logging.getLogger("metaclinic"), logging.getLogger("flwr")]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
        handler.close()


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
