"""Prefect flows (installed as ``fedrec.flows``): ``federated_training`` (the coordinator's), ``silo_agent`` (one run
per silo per federation), ``scheduled_retraining`` (what ``fedrec deploy`` runs on its cron). Importing them does
nothing else: the entry points (``fedrec``, the silo host, bench scripts, tests) apply fedrec's offline,
project-local environment defaults before Prefect is first imported (:func:`fedrec.core.env.apply_defaults`)."""
