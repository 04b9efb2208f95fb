"""Leave-one-hospital-out on UCI Heart Disease: federated against central meta-learning, on the same episodes.

    python scripts/federated_loho.py --hospitals va cleveland --out federated_loho.md

For each held-out hospital, ``configs/federated_heart_disease.yaml`` is federated over the other three
(one Flower client each, loopback gRPC), and the same algorithm is trained centrally on the three pooled,
from the same initial weights (the fit config's seed) and with the same number of meta-batches in total:
once with the federation's feature encoding (from the sites' sums), so that the training is the only
difference, and once with central training's own (medians and moments of the pooled rows), what fit
does: the whole cost of federating. All are scored on the same fixed meta-test episodes, with the
no-learning baselines and the logistic regression of the pooled hospitals; the table gives each beside
the federated model with the paired difference over episodes (mean ± 95% CI).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import metaclinic.federated  # noqa: F401  (Flower's telemetry off before flwr is imported)
from metaclinic.cli import score_meta_test
from metaclinic.compare import Run, markdown, paired_differences, reference_runs
from metaclinic.evaluation.report import REPORT_FILE
from metaclinic.federated.build import build_model_and_data
from metaclinic.federated.client import local_trainer
from metaclinic.federated.config import FederatedConfig
from metaclinic.federated.run import POOLED, evaluation_trainer, run_on_one_machine

HOSPITALS = ["cleveland", "hungarian", "switzerland", "va"]
REPO = Path(__file__).resolve().parents[1]
METRICS = ("accuracy", "auroc", "ece")


def held_out_cell(hospital: str, args: argparse.Namespace) -> str:
    others = [h for h in HOSPITALS if h != hospital]
    config = FederatedConfig.read(
        args.config,
        args.overrides,
        sites=others,
        held_out=[hospital],
        rounds=args.rounds,
        local_steps=args.local_steps,
        min_count=args.min_count,
    )
    start = time.perf_counter()
    federated = run_on_one_machine(config, args.runs_dir, f"{hospital}-federated")
    minutes = {"federated": (time.perf_counter() - start) / 60}
    trained = {s for r in federated.federation.rounds for s in r["sites"]}
    # Central: the same model, initial weights and number of meta-batches, the hospitals pooled; once with
    # the federation's feature encoding (federation the only difference) and once with central's own
    # (medians and moments of the pooled rows, as fit does: what federation costs in all).
    steps = args.central_steps or config.federation.local_steps * sum(
        len(r["sites"]) for r in federated.federation.rounds
    )
    centrals = []
    for encoding, preprocessor in (("federated", federated.federation.preprocessor), ("own", None)):
        start = time.perf_counter()
        model, data = build_model_and_data(config.meta_test_args(), preprocessor, seeded=True)
        local_trainer(steps, config.federation.accelerator, 0).fit(model, datamodule=data)
        folder = federated.run_dir / f"central-{encoding}-encoding"
        report = score_meta_test(evaluation_trainer(config.federation.accelerator), model, data, None, folder)
        report.write(folder / REPORT_FILE)
        centrals.append(Run(f"{report.algorithm}, central ({encoding} encoding)", report.to_dict()))
        minutes[f"central, {encoding}"] = (time.perf_counter() - start) / 60
    fed = Run.read(federated.run_dir / REPORT_FILE)
    fed.name = f"{fed.report['algorithm']}, federated"
    runs = [
        fed,
        *centrals,
        Run(POOLED, json.loads((federated.run_dir / "pooled" / REPORT_FILE).read_text())),
        *reference_runs(fed.report),
    ]
    table = paired_differences(runs)
    kept = {name: {m: row[m] for m in METRICS if m in row} for name, row in table.items()}
    header = (
        f"### Held out: {hospital} (K = {data.n_shot}; min_count {config.federation.min_count}; "
        f"federated: {', '.join(sorted(trained))} trained, "
        f"{len(federated.federation.rounds)} rounds x {config.federation.local_steps} meta-batches; central: "
        f"{steps} meta-batches; minutes: {', '.join(f'{k} {v:.1f}' for k, v in minutes.items())})"
    )
    return f"{header}\n\n{markdown(kept, fed.name)}\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs/federated_heart_disease.yaml")
    parser.add_argument("--hospitals", nargs="+", default=["va", "cleveland", "hungarian"], choices=HOSPITALS)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--local_steps", type=int, default=None)
    parser.add_argument("--min_count", type=int, default=None, help="replaces federation.min_count")
    parser.add_argument("--central_steps", type=int, default=None, help="default: the federation's total")
    parser.add_argument("--runs_dir", default="runs/federated_loho")
    parser.add_argument("--out", type=Path, default=None)
    args, overrides = parser.parse_known_args()
    args.overrides = [o for o in overrides if o != "--"]
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cells = []
    for hospital in args.hospitals:
        cells.append(held_out_cell(hospital, args))
        print(cells[-1], flush=True)
        if args.out:
            args.out.write_text("\n".join(cells))


if __name__ == "__main__":
    main()
