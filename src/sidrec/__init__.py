"""sidrec: sequential recommendation with semantic IDs (TIGER, LIGER, COBRA) and baselines."""

__version__ = "0.1.0"
