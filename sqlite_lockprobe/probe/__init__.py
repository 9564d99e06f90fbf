"""The probe: runs inside the program (standard library only)."""
