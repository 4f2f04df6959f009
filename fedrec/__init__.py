"""fedrec: cross-silo federated recommendation with encrypted aggregation.

The package is drawn by party; each layer imports only the layers below it (checked by import-linter, see
pyproject.toml ``[tool.importlinter]``):

- ``fedrec.cli``: the ``fedrec`` command (one module per command group over ``fedrec.cli.options``)
- ``fedrec.flows`` / ``fedrec.tasks`` / ``fedrec.orchestration``: Prefect flows and tasks, silo launch and hosts,
  MLflow tracking, operations (deploy, UI, retention)
- ``fedrec.silo`` | ``fedrec.coordinator``: what runs at a silo | at the coordinator (never import each other)
- ``fedrec.protocol``: the round's reads from the exchange that both parties do (signed, checked)
- ``fedrec.crypto``: CKKS codec, quantise/pack, masks, encode/add/decode (no I/O)
- ``fedrec.wire``: payloads, messages, the exchange, identities and signatures
- ``fedrec.core`` / ``fedrec.models``: party-neutral config, errors, data, models, training, metrics

``fedrec.flows``, ``fedrec.tasks`` and ``fedrec.models`` are the top-level ``flows/``, ``tasks/`` and ``models/``
folders of the checkout (symlinks in this folder): they install inside ``fedrec``, never as top-level names.
"""

__version__ = "0.1.0"
