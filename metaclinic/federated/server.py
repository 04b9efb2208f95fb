"""The server: Flower's gRPC server, rounds and FedAvg; metaclinic adds the sites' feature encoding first.

Before the first round the server waits for every site, asks each for its properties (its name and feature
summary) through Flower's ``get_properties``, combines the summaries into the one feature encoding every
site then uses (sent in each round's fit config), and builds the global model from the fit config's seed.
Rounds, client sampling, time-outs and the weighted average are Flower's (``flwr.server.Server``,
``flwr.server.strategy.FedAvg``, weighted by each site's number of local tasks); :class:`MetaFedAvg` only
names sites in the log, leaves a site with nothing to train out of the average, and turns failures that the
config does not accept into an error instead of a silently skipped round.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.common import (
    FitIns,
    FitRes,
    GetPropertiesIns,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import Server, ServerConfig, SimpleClientManager
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.server import run_fl
from flwr.server.strategy import FedAvg
from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.algorithms.initialisation import load_backbone
from metaclinic.data.datamodule import EpisodicDataModule
from metaclinic.data.preprocess import TablePreprocessor
from metaclinic.federated.build import build_model_and_data
from metaclinic.federated.config import FederatedConfig, FederationError
from metaclinic.federated.parameters import load_model_arrays, model_arrays
from metaclinic.federated.statistics import combine_summaries

log = logging.getLogger("metaclinic")


@dataclass
class Federation:
    """What a finished federation leaves: the global model (meta-test data beside it) and every round."""

    model: EpisodicModule
    data: EpisodicDataModule
    preprocessor: TablePreprocessor | None
    rounds: list[dict[str, Any]] = field(default_factory=list)


def weighted_metrics(metrics: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """The sites' training loss and accuracy weighted by their tasks (FedAvg's fit_metrics_aggregation_fn)."""
    trained = [(n, m) for n, m in metrics if n > 0]
    total = sum(n for n, _ in trained)
    out: dict[str, Scalar] = {"tasks": total}
    for name in ("train_loss", "train_accuracy"):
        values = [(n, float(m[name])) for n, m in trained if name in m]
        if values:
            out[name] = sum(n * v for n, v in values) / sum(n for n, _ in values)
    return out


class MetaFedAvg(FedAvg):
    """Flower's FedAvg with sites named, sites without tasks left out, and unaccepted failures an error."""

    def __init__(
        self, site_of: dict[str, str], preprocessor: TablePreprocessor | None, local_steps: int, **kwargs
    ):
        encoded = json.dumps(preprocessor.state_dict()) if preprocessor is not None else ""
        super().__init__(
            on_fit_config_fn=lambda r: {
                "server_round": r,
                "local_steps": local_steps,
                "preprocessor": encoded,
            },
            fit_metrics_aggregation_fn=weighted_metrics,
            fraction_evaluate=0.0,
            min_evaluate_clients=0,
            **kwargs,
        )
        self.site_of = site_of
        self.sampled: list[str] = []
        self.rounds: list[dict[str, Any]] = []

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        available = client_manager.num_available()
        if available < self.min_available_clients:  # Flower would wait a day for them
            raise FederationError(
                f"round {server_round}: {available} site(s) connected, fewer than federation.min_clients="
                f"{self.min_available_clients}; the others failed or left in an earlier round"
            )
        instructions = super().configure_fit(server_round, parameters, client_manager)
        self.sampled = [proxy.cid for proxy, _ in instructions]
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        answered = {proxy.cid for proxy, _ in results}
        failed = [self.site_of.get(cid, cid) for cid in self.sampled if cid not in answered]
        reasons = sorted(
            {type(f).__name__ if isinstance(f, BaseException) else str(f[1].status) for f in failures}
        )
        if failures and not self.accept_failures:
            raise FederationError(
                f"round {server_round}: site(s) {failed} failed or disconnected ({', '.join(reasons)}); "
                "the federation stops (federation.accept_failures: false). Restart it once the site is back, "
                "or set accept_failures: true to go on with the other sites"
            )
        trained = [(proxy, res) for proxy, res in results if res.num_examples > 0]
        sat_out = [self.site_of.get(proxy.cid, proxy.cid) for proxy, res in results if res.num_examples == 0]
        if not trained:
            raise FederationError(
                f"round {server_round}: no site trained (failed: {failed}, no training episodes: {sat_out})"
            )
        parameters, metrics = super().aggregate_fit(server_round, trained, failures)
        record = {
            "round": server_round,
            "sites": sorted(self.site_of.get(proxy.cid, proxy.cid) for proxy, _ in trained),
            "sat_out": sorted(sat_out),
            "failed": sorted(failed),
            **metrics,
        }
        self.rounds.append(record)
        log.info(
            "round %d: %d tasks from %s%s%s; train/loss %.4f, train/accuracy %.4f",
            server_round, record["tasks"], ", ".join(record["sites"]),
            f"; sat out: {', '.join(sat_out)}" if sat_out else "",
            f"; failed: {', '.join(failed)}" if failed else "",
            record.get("train_loss", float("nan")), record.get("train_accuracy", float("nan")),
        )  # fmt: skip
        return parameters, metrics


def gather_sites(client_manager: ClientManager, config: FederatedConfig) -> tuple[dict[str, str], dict]:
    """Waits for every site, then asks each for its name and feature summary.

    Returns ``{Flower client id: site}`` and ``{site: summary}``.
    """
    settings = config.federation
    expected = settings.site_names
    if not client_manager.wait_for(len(expected), timeout=int(settings.connect_timeout)):
        raise FederationError(
            f"{client_manager.num_available()} of {len(expected)} sites ({expected}) joined within "
            f"federation.connect_timeout={settings.connect_timeout:g} s; start a client for every site"
        )
    site_of, summaries = {}, {}
    ins = GetPropertiesIns(config={"min_count": settings.min_count})
    for cid, proxy in client_manager.all().items():
        try:
            properties = proxy.get_properties(ins, timeout=settings.round_timeout, group_id=0).properties
        except Exception as error:  # the client crashed or left: its own log says why
            raise FederationError(
                "a site failed before the first round, while summarising its features "
                f"({type(error).__name__}); its log says why (the one-machine run: federation.log)"
            ) from None
        site = str(properties.get("site"))
        if site not in expected or site in summaries:
            raise FederationError(
                f"a client joined as site {site!r}; expected each of {expected} once (is a site running "
                "twice, or with another config?)"
            )
        site_of[cid] = site
        summaries[site] = json.loads(str(properties.get("summary") or "{}"))
    log.info("federation: sites %s joined", sorted(summaries))
    return site_of, summaries


def global_model(
    config: FederatedConfig, preprocessor: TablePreprocessor | None
) -> tuple[EpisodicModule, EpisodicDataModule]:
    """The model every site starts from (seeded as the fit config's central run is) and the meta-test data."""
    model, data = build_model_and_data(config.meta_test_args(), preprocessor, seeded=True)
    if model.init_from is not None:  # "pretrain, then meta-train": the global model starts from it
        load_backbone(model.backbone, model.init_from)
        model.init_from = None
    return model, data


def serve(
    config: FederatedConfig, address: str, on_listening: Callable[[], None] | None = None
) -> Federation:
    """Runs the server on ``address`` until the last round and returns the federation's global model.

    ``on_listening`` is called once the server accepts connections (the one-machine run starts its sites
    then: a Flower 1.x gRPC client that finds no server stops instead of retrying).
    """
    settings = config.federation
    client_manager = SimpleClientManager()
    grpc_server = start_grpc_server(client_manager=client_manager, server_address=address)
    if on_listening is not None:
        on_listening()
    server = Server(client_manager=client_manager)  # its strategy is set once the sites have joined
    try:
        site_of, summaries = gather_sites(client_manager, config)
        tables = {site: s for site, s in summaries.items() if s}
        preprocessor = combine_summaries(tables) if tables else None
        model, data = global_model(config, preprocessor)
        strategy = MetaFedAvg(
            site_of,
            preprocessor,
            settings.local_steps,
            min_fit_clients=settings.min_clients,
            min_available_clients=settings.min_clients,
            accept_failures=settings.accept_failures,
            initial_parameters=ndarrays_to_parameters(model_arrays(model)),
        )
        server.set_strategy(strategy)
        run_fl(server, ServerConfig(num_rounds=settings.rounds, round_timeout=settings.round_timeout))
        load_model_arrays(model, parameters_to_ndarrays(server.parameters))
        return Federation(model, data, preprocessor, strategy.rounds)
    except BaseException:
        server.disconnect_all_clients(timeout=5)  # tell the sites still connected that no round follows
        raise
    finally:
        grpc_server.stop(grace=1)
