"""Prefect flows. Importing this package first applies fedrec's offline, project-local defaults (PREFECT_HOME
under the project, analytics off), which Prefect reads when it is first imported."""

from fedrec import env

env.apply_defaults()
