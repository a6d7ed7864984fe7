"""litseg: shared core of the suite (readers, checkpoint loader, CLI, seeding)."""

__version__ = "0.1.0"
