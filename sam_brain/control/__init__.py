"""The control surface: the daemon, its HTTP API and the samctl CLI."""
