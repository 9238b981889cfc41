"""Curation: the judge that scores every generated image, and the gate that keeps, flags or
regenerates it (the spec's `qc` section)."""
