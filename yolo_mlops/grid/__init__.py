"""The grid across experiments: DVC's queue, sync with MLflow, ranking, insights, registry, report, the CLI.

No DVC stage imports this package."""
