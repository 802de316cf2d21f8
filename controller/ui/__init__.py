"""The hub's web UI: static files served by ``controller.api.ui``."""
