"""controller/reconcilers."""
