"""A federation's config: the central fit config it federates, the sites, and Flower's round settings.

``configs/federated_heart_disease.yaml`` names a fit config (``fit_config``: model, data, seed) and says only
what federation adds (STYLE 11: experiments say only what differs): which sites train (``sites``), which one
is held out for the meta-test (``held_out``), rounds, local meta-batches per round, how many sites a round
needs and what a failed site does to it. Each site's data is the fit config's data with ``meta_train`` its
own site (and, for one file per site, only its own file): a client opens nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metaclinic.errors import DataError


class FederationError(DataError):
    """A federation that cannot go on: too few sites, a failed round that may not be skipped, a mismatch."""


@dataclass
class FederationSettings:
    """The ``federation:`` block of a federated config (every key is documented in the example config).

    Args:
        sites: the sites that train, as names of ``data.init_args.meta_train`` entries (``site`` task mode);
            or ``{site: [dotted overrides]}``, applied after the default ``--data.init_args.meta_train=
            [site]`` and so able to replace it (other data: an image folder or MedMNIST classes per site).
        held_out: the site(s) of the meta-test, never seen in training.
        rounds: Flower rounds.
        local_steps: meta-batches each site trains per round (its number of tasks is FedAvg's weight).
        min_clients: sites a round needs; the federation starts when every site has joined.
        accept_failures: ``true``: a round whose site fails or disconnects goes on with the others;
            ``false``: the federation stops with an error naming the round and the site.
        round_timeout: seconds a round waits for a site before counting it as failed.
        connect_timeout: seconds the server waits for every site to join.
        client_max_wait: seconds a client keeps trying to reach the server.
        min_count: a site's numeric column with fewer observed values sends no sums
            (:mod:`metaclinic.federated.statistics`).
        address: where the server listens (``host:port``); the one-machine run picks a free loopback port.
        accelerator: Lightning accelerator of the sites' local training.
    """

    sites: list[str] | dict[str, list[str]]
    held_out: list[str]
    rounds: int = 20
    local_steps: int = 25
    min_clients: int = 2
    accept_failures: bool = True
    round_timeout: float | None = 600.0
    connect_timeout: float = 120.0
    client_max_wait: float = 300.0
    min_count: int = 5
    address: str = "0.0.0.0:8080"
    accelerator: str = "cpu"

    def __post_init__(self) -> None:
        names = self.site_names
        if not names:
            raise FederationError("federation.sites: list at least one site that trains")
        if len(set(names)) != len(names):
            raise FederationError(f"federation.sites lists a site twice: {names}")
        if isinstance(self.held_out, str):
            self.held_out = [self.held_out]
        both = sorted(set(names) & set(self.held_out))
        if both:
            raise FederationError(f"federation.held_out {both} also train (federation.sites); they must not")
        for name in ("rounds", "local_steps", "min_clients", "min_count"):
            if getattr(self, name) < 1:
                raise FederationError(f"federation.{name} must be at least 1, got {getattr(self, name)}")
        if self.min_clients > len(names):
            raise FederationError(
                f"federation.min_clients={self.min_clients} but only {len(names)} sites train: {names}"
            )

    @property
    def site_names(self) -> list[str]:
        return list(self.sites)


@dataclass
class FederatedConfig:
    """A federated run: the fit config (with its dotted overrides) and the federation settings."""

    fit_config: Path
    federation: FederationSettings
    overrides: list[str] = field(default_factory=list)
    name: str = "federated"

    @classmethod
    def read(cls, path: str | Path, overrides: list[str] = (), **federation: Any) -> FederatedConfig:
        """Reads ``path``; ``overrides`` follow the config's own, ``federation`` keys replace its keys."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise DataError(f"{path}: not a readable federated config ({error})") from None
        unknown = sorted(set(raw) - {"fit_config", "overrides", "federation"})
        if unknown or "fit_config" not in raw or "federation" not in raw:
            raise DataError(
                f"{path}: a federated config has the keys fit_config, overrides and federation"
                + (f"; unknown: {unknown}" if unknown else "; fit_config and federation are required")
            )
        settings = {**(raw["federation"] or {}), **{k: v for k, v in federation.items() if v is not None}}
        known = {f.name for f in dataclasses.fields(FederationSettings)}
        if sorted(set(settings) - known):
            raise DataError(
                f"{path}: unknown federation keys {sorted(set(settings) - known)}; known: {sorted(known)}"
            )
        fit_config = (path.parent / raw["fit_config"]).resolve()
        if not fit_config.is_file():
            raise DataError(f"{path}: fit_config {raw['fit_config']} is not a file ({fit_config})")
        return cls(
            fit_config=fit_config,
            federation=FederationSettings(**settings),
            overrides=[*(raw.get("overrides") or []), *overrides],
            name=path.stem,
        )

    # -- the command lines every part builds its model and data from -----------------------------------------
    def base_args(self) -> list[str]:
        """The fit config and its overrides, with nothing logged and no run directory."""
        return ["--config", str(self.fit_config), *self.overrides, "--trainer.logger=false"]

    def site_args(self, site: str) -> list[str]:
        """A site's model and data: its own meta-train, no evaluation split, only its own file (a
        ``{site: file}`` table), then the site's own overrides (``sites: {site: [...]}``)."""
        sites = self.federation.sites
        if site not in sites:
            raise FederationError(f"site {site!r} is not in federation.sites {self.federation.site_names}")
        own = list(sites[site] or []) if isinstance(sites, dict) else []  # last: they replace the defaults
        return [
            *self.base_args(),
            f"--data.init_args.meta_train=[{site}]",
            "--data.init_args.meta_val=[]",
            "--data.init_args.meta_test=[]",
            *self._own_files([site]),
            *own,
        ]

    def meta_test_args(self) -> list[str]:
        """The held-out evaluation: the fit config with the federated sites as meta-train, so the same split
        and the same fixed meta-test episodes as the central run of that config (paired comparisons)."""
        train = ",".join(self.federation.site_names)
        return [
            *self.base_args(),
            f"--data.init_args.meta_train=[{train}]",
            f"--data.init_args.meta_test=[{','.join(self.federation.held_out)}]",
        ]

    def held_out_args(self) -> list[str]:
        """The held-out site alone, as it scores the global model on its own machine: only its own file, no
        meta-train rows (the features are encoded with the federation's encoding, sent with the model)."""
        held_out = self.federation.held_out
        return [
            *self.base_args(),
            "--data.init_args.meta_train=[]",
            "--data.init_args.meta_val=[]",
            f"--data.init_args.meta_test=[{','.join(held_out)}]",
            *self._own_files(held_out),
        ]

    def _own_files(self, sites: list[str]) -> list[str]:
        """``{site: file}`` tables restricted to ``sites``' files, so that a client never opens another's."""
        fit = yaml.safe_load(self.fit_config.read_text()) or {}
        table = ((fit.get("data") or {}).get("init_args") or {}).get("table") or {}
        path = table.get("path")
        if not isinstance(path, dict):
            return []
        missing = [s for s in sites if s not in path]
        if missing:
            raise FederationError(
                f"{self.fit_config}: data.init_args.table.path has no file for sites {missing}"
            )
        own = {s: path[s] for s in sites}
        return [f"--data.init_args.table.path={yaml.safe_dump(own, default_flow_style=True).strip()}"]
