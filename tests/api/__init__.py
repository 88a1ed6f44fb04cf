"""Tests of the HTTP API (kernos.api): a package, so that its helpers import by name."""
