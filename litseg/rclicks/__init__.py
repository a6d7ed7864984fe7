"""RClicks: click maps and baselines, real / synthetic clicks.csv, clickability band sampler (clicking groups)."""
