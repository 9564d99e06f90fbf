"""Diagnosis: from recorded events to spans (timeline.py), then to findings (one module per
pattern). Deterministic: the same events always give the same findings."""
