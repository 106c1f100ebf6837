"""DataLoader tuning: the budgeted search (pure) and its measurement on real DataLoaders (torch)."""
