"""What combines sources, diagnosis and reports: check, compare-fix, scenario from events."""
