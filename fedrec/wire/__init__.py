"""The wire: frozen payloads with per-chunk digests, typed messages, the exchange (a filesystem or object store),
identities and signatures (``trust``)."""
