"""The control store: revisions, artifacts, admin tokens and a tamper-evident audit log."""
