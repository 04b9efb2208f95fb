"""Meta-learning algorithms: one LightningModule each, on the shared :class:`EpisodicModule` base."""

from metaclinic.algorithms.anil import ANIL
from metaclinic.algorithms.base import EpisodicModule
from metaclinic.algorithms.inner_loop import InnerLoopModule
from metaclinic.algorithms.leo import LEO
from metaclinic.algorithms.lstm_meta_learner import LSTMMetaLearner
from metaclinic.algorithms.maml import MAML
from metaclinic.algorithms.maml_plus_plus import MAMLPlusPlus
from metaclinic.algorithms.mann import MANN
from metaclinic.algorithms.matchingnet import MatchingNet
from metaclinic.algorithms.metagan import MetaGAN
from metaclinic.algorithms.metanet import MetaNetwork
from metaclinic.algorithms.metasgd import MetaSGD
from metaclinic.algorithms.metric_based import MetricModule
from metaclinic.algorithms.protonet import ProtoNet
from metaclinic.algorithms.relationnet import RelationNet
from metaclinic.algorithms.reptile import Reptile
from metaclinic.algorithms.siamese import Siamese

__all__ = [
    "ANIL",
    "LEO",
    "MAML",
    "MANN",
    "EpisodicModule",
    "InnerLoopModule",
    "LSTMMetaLearner",
    "MAMLPlusPlus",
    "MatchingNet",
    "MetaGAN",
    "MetaNetwork",
    "MetaSGD",
    "MetricModule",
    "ProtoNet",
    "RelationNet",
    "Reptile",
    "Siamese",
]
