"""The party-neutral core: typed config, named errors, data loading and splitting, training, task variants,
metrics, state flattening. Nothing here knows about the exchange, crypto, Prefect or a party."""
