"""Federated meta-learning across hospitals on Flower: each site's patients stay at the site.

The shared initialisation (or embedding) of any meta-learner is trained by federated averaging of the
sites' local meta-training (:mod:`~metaclinic.federated.client`, :mod:`~metaclinic.federated.server`);
a new site then adapts from its own few labelled patients, and the meta-test on a held-out site reports how
well (:mod:`~metaclinic.federated.run`). ``python -m metaclinic.federated --config <federated config>``.
"""

import os

# Flower reports usage events to its servers unless told not to, and reads the setting when imported:
# nothing about a hospital's federation should leave the machines taking part.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
