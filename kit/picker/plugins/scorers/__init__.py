"""Scorers: each returns a score in [0, 1] per candidate endpoint."""
