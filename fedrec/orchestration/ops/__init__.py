"""Operations: the scheduled retraining deployment, the local UIs, retention, plots and page screenshots.

Plain Python under the `fedrec deploy | worker | ui | cleanup` commands (fedrec/cli/ops.py) and the
`scheduled_retraining` flow (flows/scheduled.py)."""

from fedrec.core.errors import FedrecError


class OpsError(FedrecError):
    """An operations step cannot proceed: a server did not start, a port is taken, no Prefect API answers."""
