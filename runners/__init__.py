"""Runner profiles: a named profile plus user flags -> Beam pipeline options."""
