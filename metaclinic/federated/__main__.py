"""``python -m metaclinic.federated [server | client | evaluate] --config <federated config>``.

Without a role, the whole federation runs on this machine (server and one client per site on loopback
gRPC) and ends with the meta-test report of the held-out site. On separate machines, start
``server --address 0.0.0.0:8080 --meta_test=false`` on one, then ``client --site <name> --server
<host>:8080`` at each site, all with the same config: a client reads only its own site's data. The held-out
site scores the server's ``global_model.ckpt`` on its own data with ``evaluate --ckpt_path <file>``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import metaclinic.federated  # noqa: F401  (Flower's telemetry off before flwr is imported)
from metaclinic.errors import MetaclinicError
from metaclinic.fit import show_info_logs

log = logging.getLogger("metaclinic")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metaclinic.federated",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    roles = ["all", "server", "client", "evaluate"]
    parser.add_argument("role", nargs="?", choices=roles, default="all", help="all: every part, here")
    parser.add_argument("--config", type=Path, required=True, help="a federated config")
    parser.add_argument("--site", help="client: the site this client is (one of federation.sites)")
    parser.add_argument("--server", help="client: the server's host:port")
    parser.add_argument("--address", help="server: where to listen (default federation.address)")
    parser.add_argument("--ckpt_path", type=Path, help="evaluate: a global_model.ckpt of the federation")
    parser.add_argument("--rounds", type=int, help="replaces federation.rounds")
    parser.add_argument("--local_steps", type=int, help="replaces federation.local_steps")
    parser.add_argument(
        "--override", action="append", default=[], metavar="FLAG",
        help="a dotted flag for the fit config, e.g. --override=--data.init_args.n_shot=1",
    )  # fmt: skip
    parser.add_argument("--runs_dir", default="runs", help="parent folder of run directories")
    parser.add_argument("--run_name", help="default: the config file's name")
    parser.add_argument(
        "--meta_test", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
        help="server: meta-test the global model on the held-out site (needs the data)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    show_info_logs()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # not a line per site and round
    from metaclinic.federated.client import SiteClient
    from metaclinic.federated.config import FederatedConfig
    from metaclinic.federated.run import (
        LOG_FILE,
        logged_to,
        meta_test_checkpoint,
        meta_test_global_model,
        new_run_directory,
        run_on_one_machine,
        write_outcome,
    )
    from metaclinic.federated.server import serve

    try:
        config = FederatedConfig.read(
            args.config, args.override, rounds=args.rounds, local_steps=args.local_steps
        )
        if args.role == "all":
            run = run_on_one_machine(config, args.runs_dir, args.run_name)
            print(f"Run: {run.run_dir}")
        elif args.role == "server":
            run_dir = new_run_directory(Path(args.runs_dir) / (args.run_name or config.name))
            with logged_to(run_dir / LOG_FILE):
                federation = serve(config, args.address or config.federation.address)
                write_outcome(run_dir, federation)
                if args.meta_test:
                    meta_test_global_model(federation, run_dir, config.federation.accelerator)
            print(f"Run: {run_dir}")
        elif args.role == "evaluate":
            if not args.ckpt_path:
                raise SystemExit("python -m metaclinic.federated evaluate: give --ckpt_path")
            run_dir = new_run_directory(Path(args.runs_dir) / (args.run_name or f"{config.name}-evaluate"))
            meta_test_checkpoint(config, args.ckpt_path, run_dir)
            print(f"Run: {run_dir}")
        else:
            if not args.site or not args.server:
                raise SystemExit("python -m metaclinic.federated client: give --site and --server")
            from flwr.client import start_client

            client = SiteClient(config, args.site)
            start_client(server_address=args.server, client=client.to_client(),
                         max_wait_time=config.federation.client_max_wait)  # fmt: skip
    except MetaclinicError as error:
        raise SystemExit(f"metaclinic: error: {error}") from None


if __name__ == "__main__":
    main()
