"""Coverage-guided fuzzing of every parser that takes network input (scripts/fuzz)."""
