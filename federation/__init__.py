"""The federation: privacy pipeline, accountant, aggregation, Flower apps, simulation (next issues)."""
