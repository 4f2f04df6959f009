"""What runs at a silo, on its own machine, with only its own data and keys: its agent (join / setup / fit /
settle / evaluate), data sources, validation, model store, differential privacy, recommendations, serving and
feedback."""
