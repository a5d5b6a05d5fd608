"""The stages: each a thin command that reads its inputs from files and writes its outputs (make runs them)."""
