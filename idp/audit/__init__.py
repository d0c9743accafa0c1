"""The audit trail writer (idp/audit/trail.py): one row per security-relevant event."""
