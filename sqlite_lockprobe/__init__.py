"""lockprobe: find out why an application gets "database is locked", and what to change."""

__version__ = "0.1.0"
