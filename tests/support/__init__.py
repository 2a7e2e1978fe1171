"""Test support: servers the suite starts for real, an app factory, a client, waiting helpers."""
