"""Governance: the registered adapter-only pyfunc (serving), registration (register), the
promotion gate with its pre-checks and four-eyes decisions (gate), and the hash-chained audit
log (audit)."""
