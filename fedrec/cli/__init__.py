"""The ``fedrec`` command: ``app`` (federated runs, data steps, silos), ``items``, ``ops``, ``sources`` command
modules over the shared ``options`` module."""
