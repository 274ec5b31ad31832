"""Stream processors: normalize (SIS rows → student views), sevis_events (views → SEVIS events), batcher."""
