"""Named errors a user can cause: each says what was wrong and what to do."""


class FedrecError(Exception):
    """Base class for errors raised by fedrec."""


class ConfigError(FedrecError, ValueError):
    """params.yaml (or an override) is malformed: unknown key, wrong type or value out of range."""


class DataNotFoundError(FedrecError, FileNotFoundError):
    """The MovieLens files are neither in the data directory nor downloadable."""


class PartitionChangedError(FedrecError):
    """The silos' demo partition on disk was made with other ``partition.*`` (or data) settings than the ones in
    force, and feedback batches appended under the old partition would no longer match their silos."""


class ChecksumError(FedrecError):
    """A downloaded archive does not match its published checksum."""


class SiloValidationError(FedrecError):
    """A silo's data failed the Great Expectations suite."""

    def __init__(self, silo_id: str, failures: list[str]):
        self.silo_id = silo_id
        self.failures = list(failures)
        super().__init__(
            f"silo {silo_id!r} failed data validation: " + "; ".join(self.failures)
            + ". Fix the silo's data (see its validation report) and rerun; the silo is left out until then."
        )


class FederationError(FedrecError):
    """A federation cannot proceed as configured (e.g. fewer valid silos than federation.min_silos)."""


class PayloadError(FedrecError):
    """A payload crossing a silo boundary is corrupt, truncated, foreign or of the wrong kind."""


class DecryptionKeyError(FedrecError):
    """A context without the secret key was asked to decrypt (or, symmetric CKKS, to encrypt)."""


class PolicyError(FederationError):
    """The coordinator asked a silo for less privacy than the silo's own params demand (masking, HE, min_silos):
    the silo refuses and says which setting."""
